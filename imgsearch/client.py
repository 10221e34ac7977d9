"""The command-line client: HTTP calls to a running daemon, and what each command prints."""

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import AUTO_TOKEN, LOOPBACK_HOSTS
from .formatting import (
    failure_lines,
    format_duplicates,
    format_job,
    format_jobs,
    format_results,
    format_watches,
    key_values,
)

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
        _err(f"error: {exc.message} (HTTP {exc.status})")
        return EXIT_ERROR
    except Unreachable as exc:
        _err(f"cannot reach imgsearch at {exc.url}: is `imgsearch serve` running? ({exc.reason})")
        return EXIT_USAGE
    except UsageError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `imgsearch search ... | head`: the reader has gone; stay quiet
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


# -- commands --------------------------------------------------------------------------------


def stats(conn: Connection, *, as_json: bool = False) -> int:
    """`imgsearch stats`: key: value lines."""
    body = conn.get("/stats")
    _out(_dumps(body) if as_json else "\n".join(key_values(body)))
    return EXIT_OK


def remove(conn: Connection, path: str, *, as_json: bool = False) -> int:
    """`imgsearch remove PATH`: forget a file or a folder's images."""
    body = conn.get("/remove", [("image", str(absolute(path)))])
    _out(_dumps(body) if as_json else f"removed {body.get('removed', 0)}")
    return EXIT_OK


def search(
    conn: Connection,
    image: str | None = None,
    *,
    text: str | None = None,
    upload: bool = False,
    limit: int | None = None,
    compare: Sequence[str] = (),
    rerank: bool = True,
    folder: Sequence[str] = (),
    where: Sequence[str] = (),
    as_json: bool = False,
) -> int:
    """`imgsearch search IMAGE|--text T`: a table of the nearest stored images."""
    if (image is None) == (text is None):
        raise UsageError("give either an image or --text")
    if upload and (image is None or is_url(image)):
        raise UsageError("--upload needs an image file")
    options: list[tuple[str, str]] = [] if limit is None else [("limit", str(limit))]
    options += [("compare", name) for name in compare]
    options += [] if rerank else [("rerank", "0")]
    filters = filter_params(folder, where)
    if text is not None:
        body = conn.get("/search", [("text", text), *options, *filters])
    elif upload:
        data, ctype = _multipart(options, absolute(image or ""))
        path = f"/search?{urllib.parse.urlencode(filters)}" if filters else "/search"
        body = conn.call("POST", path, body=data, content_type=ctype)[1]
    elif is_url(image or ""):
        body = conn.get("/search", [("url", image or ""), *options, *filters])
    else:
        body = conn.get("/search", [("image", str(absolute(image or ""))), *options, *filters])
    _out(_dumps(body) if as_json else format_results(body.get("results", [])))
    return EXIT_OK


def add(
    conn: Connection,
    path: str | None,
    *,
    csv: str | None = None,
    update: bool = False,
    wait: bool = True,
    as_json: bool = False,
    poll_s: float = POLL_S,
) -> int:
    """`imgsearch add PATH|URL|--csv FILE`: start an add job and follow it (or not)."""
    if (path is None) == (csv is None):
        raise UsageError("give a path or URL, or --csv FILE")
    params = [("wait", "0"), *([("update", "1")] if update else [])]
    if csv is not None:
        data = _read(absolute(csv))
        body = conn.call("POST", "/add", params, body=data, content_type="text/csv")[1]
    else:
        target = path or ""
        what = ("url", target) if is_url(target) else ("image", str(absolute(target)))
        body = conn.get("/add", [what, *params])
    if "job" not in body:  # a daemon without jobs: the add already ran to completion
        return _report(body, as_json)
    if not wait:
        _out(_dumps(body) if as_json else str(body["job"]))
        return EXIT_OK
    try:
        job = follow(conn, str(body["job"]), show_progress=not as_json, poll_s=poll_s)
    except KeyboardInterrupt:
        job_id = body["job"]
        _err(f"still running as job {job_id} (imgsearch jobs --cancel {job_id} to stop it)")
        return EXIT_INTERRUPTED
    return _report(job, as_json)


def follow(conn: Connection, job_id: str, *, show_progress: bool, poll_s: float) -> Any:
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


def _report(job: Mapping[str, Any], as_json: bool) -> int:
    """The summary of a finished add; 1 when the job itself did not finish (not for bad files)."""
    state = job.get("state", "done")
    if as_json:
        _out(_dumps(job))
    else:
        counts = ", ".join(
            f"{k} {job.get(k, 0)}" for k in ("added", "updated", "skipped", "failed")
        )
        _out("\n".join([counts, *failure_lines(job)]))
    if state == "done":
        return EXIT_OK
    reason = f": {job['error']}" if job.get("error") else ""
    _err(f"error: job {job.get('id')} {state}{reason}")
    return EXIT_ERROR


def jobs(
    conn: Connection, job_id: str | None = None, *, cancel: str | None = None, as_json: bool = False
) -> int:
    """`imgsearch jobs [ID] [--cancel ID]`: the add jobs, one job, or cancel one."""
    if job_id is not None and cancel is not None:
        raise UsageError("give a job id or --cancel ID, not both")
    if cancel is not None:
        body = conn.call("DELETE", f"/jobs/{urllib.parse.quote(cancel, safe='')}")[1]
    elif job_id is not None:
        body = conn.get(f"/jobs/{urllib.parse.quote(job_id, safe='')}")
    else:
        body = conn.get("/jobs")
        _out(_dumps(body) if as_json else format_jobs(body.get("jobs", [])))
        return EXIT_OK
    _out(_dumps(body) if as_json else format_job(body))
    return EXIT_OK


def filter_params(
    folder: str | Sequence[str] | None, where: Sequence[str]
) -> list[tuple[str, str]]:
    """`folder` (made absolute) and `where` query parameters, each repeatable."""
    folders = [folder] if isinstance(folder, str) else list(folder or ())
    return [("folder", str(absolute(f))) for f in folders] + [("where", w) for w in where]


def duplicates(
    conn: Connection,
    *,
    threshold: float | None = None,
    folder: str | Sequence[str] | None = None,
    where: Sequence[str] = (),
    as_json: bool = False,
) -> int:
    """`imgsearch duplicates`: a block per cluster of identical files or near copies."""
    params = [] if threshold is None else [("threshold", repr(threshold))]
    body = conn.get("/duplicates", params + filter_params(folder, where))
    _out(_dumps(body) if as_json else format_duplicates(body))
    return EXIT_OK


def watch(
    conn: Connection, folder: str | None = None, *, stop: bool = False, as_json: bool = False
) -> int:
    """`imgsearch watch [DIR] [--stop]`: list watched folders, start or stop watching one."""
    if folder is None:
        if stop:
            raise UsageError("--stop needs a folder")
        body = conn.get("/watch")
        _out(_dumps(body) if as_json else format_watches(body.get("watches", [])))
        return EXIT_OK
    params = [("dir", str(absolute(folder)))]
    if stop:
        body = conn.call("DELETE", "/watch", params)[1]
    else:
        body = conn.get("/watch", params)
    _out(_dumps(body) if as_json else format_watches([body]))
    return EXIT_OK


def _multipart(fields: Params, path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body: the fields, then the file as `image`."""
    data = _read(path)
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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _dumps(body: Any) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False)


def _out(text: str) -> None:
    print(text, file=sys.stdout)


def _err(text: str) -> None:
    print(text, file=sys.stderr)
