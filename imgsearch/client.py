"""The command-line client's plumbing: the connection to a running daemon, the global options
every command receives (Context), exit codes, and printing. The commands are in commands.py."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import AUTO_TOKEN, LOOPBACK_HOSTS

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
POLL_S = 0.5
FINAL_STATES = frozenset({"done", "failed", "cancelled", "interrupted"})
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
Params = Sequence[tuple[str, str]]


class ServerError(Exception):
    """The daemon answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class Unreachable(Exception):
    """No answer from the daemon at all."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url, self.reason = url, reason


class UsageError(Exception):
    """Arguments that make no sense together, or a local file that cannot be read."""


@dataclass(frozen=True)
class Connection:
    """Where the daemon is and how to talk to it."""

    url: str = DEFAULT_URL
    token: str | None = None

    @property
    def base(self) -> str:
        url = self.url.strip().rstrip("/")
        return url if "://" in url else f"http://{url}"

    def call(
        self,
        method: str,
        path: str,
        params: Params = (),
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """One request; the status and the decoded JSON body. Raises ServerError, Unreachable."""
        url = self.base + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        headers = {"Accept": "application/json", "User-Agent": f"imgsearch-cli/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        log.debug("%s %s", method, url)
        try:
            with self._opener().open(request, timeout=timeout) as resp:
                return int(resp.status), _decode(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise ServerError(_error_message(exc.read(), exc.reason), exc.code) from None
        except urllib.error.URLError as exc:
            raise Unreachable(self.base, str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.base, str(exc) or type(exc).__name__) from None

    def get(self, path: str, params: Params = (), **kwargs: Any) -> Any:
        return self.call("GET", path, params, **kwargs)[1]

    def _opener(self) -> urllib.request.OpenerDirector:
        # A daemon on this machine is never reached through an http_proxy from the environment.
        host = urllib.parse.urlsplit(self.base).hostname or ""
        if host in LOOPBACK_HOSTS:
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener()


@dataclass(frozen=True)
class Context:
    """What every command receives from the global options (given before or after its name)."""

    url: str = DEFAULT_URL
    token: str | None = None  # as given: `auto` is read from data_dir when connecting
    data_dir: Path = Path("data")
    as_json: bool = False
    verbose: bool = False

    def connection(self) -> Connection:
        """The daemon at --url, with the --token (`auto`: DATA_DIR/token)."""
        return Connection(self.url, read_token(self.token, self.data_dir))

    def emit(self, body: Any, text: Callable[[Any], str]) -> None:
        """Print the daemon's JSON as is with --json, else `text(body)`."""
        out(dumps(body) if self.as_json else text(body))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {"text": raw.decode(errors="replace")}


def _error_message(raw: bytes, reason: Any) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or str(reason)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return str(reason)


def absolute(path: str | Path) -> Path:
    """The path as the daemon needs it: absolute, relative to the caller's working directory."""
    return Path(path).expanduser().absolute()


def is_url(text: str) -> bool:
    """Whether a command-line argument is a URL for the daemon to download, not a path."""
    return text.strip().lower().startswith(("http://", "https://"))


def read_token(token: str | None, data_dir: Path) -> str | None:
    """`auto` means the token the daemon generated into DATA_DIR/token."""
    if token != AUTO_TOKEN:
        return token
    path = data_dir / "token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"--token auto: cannot read {path}: {exc.strerror}") from None


def run(command: Callable[[], int]) -> int:
    """Run one command; turn failures into a message on stderr and an exit code."""
    try:
        return command()
    except ServerError as exc:
        err(f"error: {exc.message} (HTTP {exc.status})")
        return EXIT_ERROR
    except Unreachable as exc:
        err(f"cannot reach imgsearch at {exc.url}: is `imgsearch serve` running? ({exc.reason})")
        return EXIT_USAGE
    except UsageError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `imgsearch search ... | head`: the reader has gone; stay quiet
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def follow(conn: Connection, job_id: str, *, show_progress: bool, poll_s: float = POLL_S) -> Any:
    """Poll a job until it stops, drawing a progress bar on stderr; the final job."""
    from tqdm import tqdm

    path = f"/jobs/{urllib.parse.quote(job_id, safe='')}"
    with tqdm(unit="file", disable=not show_progress, file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            job = conn.get(path, timeout=60)
            total = job.get("total")
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(int(job.get("done") or 0) - bar.n)
            bar.set_postfix_str(f"{job.get('state')}, {job.get('failed', 0)} failed")
            if job.get("state") in FINAL_STATES:
                return job
            time.sleep(poll_s)


def multipart(fields: Params, path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body: the fields, then the file as `image`."""
    data = read_local(path)
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        chunks.append(head.encode() + value.encode() + b"\r\n")
    filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"'
        f"\r\nContent-Type: {ctype}\r\n\r\n"
    )
    chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def read_local(path: Path) -> bytes:
    """A local file's bytes; a UsageError (exit 2) when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def dumps(body: Any) -> str:
    """JSON as --json prints it."""
    return json.dumps(body, indent=2, ensure_ascii=False)


def out(text: str) -> None:
    """A line of the command's output (stdout)."""
    print(text, file=sys.stdout)


def err(text: str) -> None:
    """A message for the user (stderr)."""
    print(text, file=sys.stderr)
