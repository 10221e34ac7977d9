"""The command-line client's plumbing: the connection to a running daemon, the global options
every command receives (Context), exit codes, and printing. The commands are in commands.py."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import AUTO_TOKEN, LOOPBACK_HOSTS
from .formatting import shown

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
POLL_S = 0.5
# Seconds to wait for the answer to a request that the daemon answers from memory on its event
# loop (stats, the jobs, the watched folders): one that takes longer is stuck, not busy. The
# others (a search, duplicates, a removal, a change: queueing an add, a cancel, a watch) do
# work that grows with the library, the network or the thread pool's queue, and wait as long
# as it takes unless --timeout says otherwise (a change given up on may still happen).
QUICK_S = 10.0
POLL_TIMEOUT_S = 60.0  # one poll of a job being followed
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
        self.then = ""  # a line said after: the job that was being followed (`detached`)


class NoAnswer(Unreachable):
    """The daemon took the request but did not answer within the timeout."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(url, f"no answer within {seconds:g} s")
        self.seconds = seconds


class NotDaemon(Exception):
    """What answered at the URL is not an imgsearch daemon (its answer is no JSON object)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url, self.reason = url, reason


class UsageError(Exception):
    """Arguments that make no sense together or cannot be sent, or a local file that cannot be
    read."""


@dataclass(frozen=True)
class Connection:
    """Where the daemon is and how to talk to it."""

    url: str = DEFAULT_URL
    token: str | None = None
    timeout: float | None = None  # --timeout: every request's limit instead of its own; 0: none

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
    ) -> tuple[int, dict[str, Any]]:
        """One request; the status and the JSON object answered. `timeout`: this request's
        seconds to wait for an answer (None: no limit) unless the connection has its own.
        Raises ServerError, Unreachable (NoAnswer), NotDaemon, UsageError."""
        query = urllib.parse.urlencode([(sendable(k), sendable(v)) for k, v in params])
        url = self.base + path + (f"?{query}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": f"imgsearch-cli/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        limit = timeout if self.timeout is None else self.timeout or None
        log.debug("%s %s", method, url)
        try:
            with self._opener().open(request, timeout=limit) as resp:
                status, raw = int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            if (said := _error_message(raw)) is None:  # (a web server's 404 page, a proxy's)
                _json_object(raw, self.base, f"{method} {path} (HTTP {exc.code})")
                said = str(exc.reason)
            raise ServerError(said, exc.code) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError) and limit is not None:  # while connecting
                raise NoAnswer(self.base, limit) from None
            raise Unreachable(self.base, str(exc.reason)) from None
        except TimeoutError as exc:  # waiting for the answer, or reading it
            if limit is None:  # the system's own (a connection that timed out)
                raise Unreachable(self.base, str(exc)) from None
            raise NoAnswer(self.base, limit) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.base, str(exc) or type(exc).__name__) from None
        return status, _json_object(raw, self.base, f"{method} {path}")

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
    timeout: float | None = None  # --timeout; None: each request's own (QUICK_S or no limit)

    def connection(self) -> Connection:
        """The daemon at --url, with the --token (`auto`: DATA_DIR/token); UsageError for
        either when it cannot make a request."""
        token = checked_token(read_token(self.token, self.data_dir))
        return Connection(checked_url(self.url), token, self.timeout)

    def emit(self, body: Any, text: Callable[[Any], str]) -> None:
        """Print the daemon's JSON as is with --json, else `text(body)`."""
        out(dumps(body) if self.as_json else text(body))


def checked_url(url: str) -> str:
    """--url as given, once it is an http(s) URL with a host (a UsageError naming it if not)."""
    base = Connection(url).base
    try:
        if any(c.isspace() or shown(c) != c for c in base):  # urlsplit would drop some
            raise ValueError("it holds spaces or control characters")
        parts = urllib.parse.urlsplit(base)
        _port = parts.port  # a ValueError for one that is not a number in 0..65535
        if parts.scheme not in ("http", "https"):
            raise ValueError("the daemon speaks http:// or https://")
        if not parts.hostname:
            raise ValueError("no host")
    except ValueError as exc:
        raise UsageError(f"invalid --url '{shown(url)}': {exc}") from None
    return url


def checked_token(token: str | None) -> str | None:
    """The token as sent: without surrounding whitespace, which a bearer token never holds
    and `TOKEN=$(cat file; echo)` or a pasted line adds (the daemon strips it from the
    header too, and `--token auto` from the file); a UsageError if it could not be sent."""
    token = token.strip() if token else None
    bad = [c for c in token or "" if not " " <= c <= "~"]
    if bad:  # a header is Latin-1 and one line; never echo the secret itself
        raise UsageError(f"invalid --token: it holds '{shown(bad[0])}'; a token is printable ASCII")
    return token or None


def checked_timeout(text: str | None) -> float | None:
    """--timeout's seconds (0: no limit); None when not given."""
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:  # NaN too
        raise UsageError(f"invalid --timeout '{shown(text)}': seconds, or 0 for no limit")
    return seconds


def sendable(text: str) -> str:
    """`text` once it can be sent as UTF-8 (a UsageError naming it if not)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise UsageError(f"{shown(text)}: not valid UTF-8") from None
    return text


def segment(text: str) -> str:
    """`text` (a job id) quoted as one segment of a URL's path."""
    return urllib.parse.quote(sendable(text), safe="")


def _json_object(raw: bytes, url: str, request: str) -> dict[str, Any]:
    """The answer's JSON object; anything else means something other than imgsearch answered."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = raw.decode(errors="replace").strip()
    excerpt = repr(text[:60] + ("..." if len(text) > 60 else "")) if text else "nothing"
    raise NotDaemon(url, f"{request} answered {excerpt}, not a JSON object")


def _error_message(raw: bytes) -> str | None:
    """The daemon's error message; None for a body that is not imgsearch's JSON error (what
    answered is something else: `_json_object` says so)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return None


def absolute(path: str | Path) -> Path:
    """The path as the daemon needs it: absolute, relative to the caller's working directory,
    and UTF-8 (the daemon receives text; it refuses to index such names too)."""
    full = local(path)
    try:
        str(full).encode()
    except UnicodeEncodeError:
        raise UsageError(f"{shown(full)}: file name is not valid UTF-8; rename it") from None
    return full


def local(path: str | Path) -> Path:
    """A path the client itself reads (an upload, a CSV), made absolute: any name will do."""
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
        err(f"error: {shown(exc.message)} (HTTP {exc.status})")
        return EXIT_ERROR
    except NotDaemon as exc:
        err(f"error: not an imgsearch daemon at {shown(exc.url)} ({shown(exc.reason)})")
        return EXIT_ERROR
    except NoAnswer as exc:
        err(
            f"no answer from imgsearch at {shown(exc.url)} within {exc.seconds:g} s: is it stuck? "
            "(--timeout SECONDS waits longer, 0 for as long as it takes)"
        )
        if exc.then:
            err(exc.then)
        return EXIT_USAGE
    except Unreachable as exc:
        where, why = shown(exc.url), shown(exc.reason)
        err(f"cannot reach imgsearch at {where}: is `imgsearch serve` running? ({why})")
        if exc.then:
            err(exc.then)
        return EXIT_USAGE
    except UsageError as exc:
        err(f"error: {shown(exc)}")
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

    path = f"/jobs/{segment(job_id)}"
    with tqdm(unit="file", disable=not show_progress, file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            job = conn.get(path, timeout=POLL_TIMEOUT_S)
            total = job.get("total")
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(int(job.get("done") or 0) - bar.n)
            bar.set_postfix_str(shown(f"{job.get('state')}, {job.get('failed', 0)} failed"))
            if job.get("state") in FINAL_STATES:
                return job
            time.sleep(poll_s)


@contextlib.contextmanager
def detached(kind: str, job_id: Any) -> Iterator[None]:
    """Around the following of a job (`kind`: job, import, export): the job runs on in the
    daemon whatever ends the following, so Ctrl-C (exit 130) and a daemon lost meanwhile
    (exit 2) say its id, without which it could not be found or cancelled from here."""
    job = shown(job_id)
    try:
        yield
    except KeyboardInterrupt:
        err(f"still running as {kind} {job} (imgsearch jobs --cancel {job} to stop it)")
        raise
    except Unreachable as exc:
        exc.then = (
            f"lost track of {kind} {job}: imgsearch jobs {job} shows it once the daemon answers"
        )
        raise


def multipart(fields: Params, path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body: the fields, then the file as `image`."""
    data = read_local(path)
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        chunks.append(sendable(head).encode() + sendable(value).encode() + b"\r\n")
    # Only the bytes are searched: a name that is not UTF-8 is sent with U+FFFD in their place.
    readable = os.fsencode(path.name).decode(errors="replace")
    filename = readable.replace('"', "_").replace("\r", "_").replace("\n", "_")
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
