"""The bulk commands: `embed` (runs here, on Ray), `import` and `export` (ask the daemon).

Each is one function taking the CLI's Context; their rows are in `commands.COMMANDS`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client import (
    EXIT_ERROR,
    EXIT_OK,
    POLL_TIMEOUT_S,
    QUICK_S,
    Connection,
    Context,
    NotDaemon,
    ServerError,
    UsageError,
    absolute,
    detached,
    segment,
)
from ..config import Config
from ..errors import BadRequest, ImgSearchError, disk_full
from ..formatting import format_import, shown

log = logging.getLogger(__name__)

EXIT_USAGE = 2
POLL_S = 0.5
KINDS = ("import", "export")  # the bulk jobs, each under its own route (/import/ID, /export/ID)


def export_dir(ctx: Context, dir: str, wait: bool) -> int:
    """`imgsearch export DIR`: an export job into a new or empty folder, followed with a
    progress bar (--no-wait: its id)."""
    body = json.dumps({"dir": str(absolute(dir)), "wait": False}).encode()
    job = _start(ctx.connection(), "export", body)
    if not wait:
        ctx.emit(job, lambda j: shown(j["id"]))
        return EXIT_OK
    job = _follow(ctx, "export", job)
    ctx.emit(
        job, lambda j: _pairs({k: j.get(k) for k in ("state", "dir", "rows", "files", "error")})
    )
    return EXIT_OK if job["state"] == "done" else EXIT_ERROR


def import_dir(ctx: Context, dir: str, path_map: list[str], wait: bool, earlier_model: bool) -> int:
    """`imgsearch import DIR`: POST /import, then follow the job with a progress bar."""
    from .importjob import PathMap  # (its checks import numpy: only `import` pays for them)

    try:  # the daemon refuses them too (400), as a usage error here before anything is sent
        PathMap.parse(path_map)
    except BadRequest as exc:
        raise UsageError(exc.message) from None
    request = {"dir": str(absolute(dir)), "wait": False, "path_map": path_map}
    body = json.dumps({**request, "earlier_model": earlier_model}).encode()
    job = _start(ctx.connection(), "import", body)
    if not wait:
        ctx.emit(job, lambda j: shown(j["id"]))
        return EXIT_OK
    job = _follow(ctx, "import", job)
    ctx.emit(job, format_import)
    return EXIT_OK if job["state"] == "done" else EXIT_ERROR


def bulk_job(conn: Connection, job_id: str, *, cancel: bool) -> dict[str, Any] | None:
    """The import or export of this id (cancelled first with `cancel`), None where the daemon
    has neither: for `imgsearch jobs`, whose ids are an add job's."""
    for kind in KINDS:
        path = f"/{kind}/{segment(job_id)}"
        try:
            return conn.call("DELETE", path)[1] if cancel else conn.get(path, timeout=QUICK_S)
        except ServerError as exc:
            if exc.status != 404:
                raise
    return None


def _start(conn: Connection, kind: str, body: bytes) -> dict[str, Any]:
    """POST /import or /export without waiting: the job, once it is one."""
    job = conn.call("POST", f"/{kind}", body=body, content_type="application/json")[1]
    return _checked(conn, kind, job)


def _checked(conn: Connection, kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """A job as the daemon answers it; NotDaemon for a JSON answer that is no job (another
    service at --url: a KeyError's traceback otherwise)."""
    if not isinstance(job.get("id"), str) or not isinstance(job.get("state"), str):
        raise NotDaemon(conn.base, f"its answer to an {kind} names no job")
    return job


def _follow(ctx: Context, kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """Poll a bulk job until it ends, with a progress bar of its rows on stderr; Ctrl-C or a
    daemon lost leaves it running and says its id (client.detached)."""
    from tqdm import tqdm

    conn = ctx.connection()
    path = f"/{kind}/{segment(job['id'])}"
    hide = True if ctx.as_json else None
    bar = tqdm(total=job.get("total"), unit="row", disable=hide, file=sys.stderr)
    with detached(kind, job["id"]), bar:
        while job["state"] in {"queued", "running"}:
            time.sleep(POLL_S)
            job = _checked(conn, kind, conn.get(path, timeout=POLL_TIMEOUT_S))
            bar.update(int(job.get("done") or 0) - bar.n)
            if "failed" in job:
                bar.set_postfix_str(f"{job['failed']} bad")
    return job


def embed(ctx: Context, sources: list[str], out: Path, **flags: Any) -> int:
    """`imgsearch embed SRC... --out DIR`: plan, run on Ray, print the summary."""
    from ..cli import setup_logging
    from ..cluster.runner import EmbedOptions
    from ..cluster.runner import embed as run_embed

    setup_logging(ctx.verbose)
    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's start-up chatter
    for handler in logging.getLogger().handlers:  # open_clip's model-build lines, on the
        handler.addFilter(_not_root_info)  # root logger itself (imgsearch's keep -v)
    keys: tuple[str, ...] = ("model", "pretrained", "checkpoint", "model_config", "device")
    keys = (*keys, "precision")
    keys = (*keys, "batch_size", "max_upload_mb", "max_image_pixels")
    try:
        config = Config.load(overrides={k: flags[k] for k in keys}).resolved()
        options = EmbedOptions(
            sources=list(sources),
            out=Path(out).expanduser().absolute(),
            model=config,
            ray_address=flags["ray"],
            workers=flags["workers"],
            cpus_per_worker=flags["cpus_per_worker"],
            gpus_per_worker=flags["gpus_per_worker"],
            shard_size=flags["shard_size"],
        )
        result = run_embed(options)
    except ImgSearchError as exc:
        log.error("%s", exc.message)
        return EXIT_USAGE
    except Exception as exc:  # a full disk in --out, Ray's own errors: one line, not a trace
        if (full := disk_full(exc)) is None and not type(exc).__module__.startswith("ray"):
            raise
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        log.error("embed stopped: %s", full.message if full is not None else lines[-1])
        return EXIT_USAGE
    # Files that failed are records (out/failures/), as bad files are for /add: not an error.
    # A shard not written is (its worker died, or raised): a script must not take the run for
    # done, and the summary is printed first (after Ray stopped: nothing of Ray's in it).
    ctx.emit(result.as_json(), _pairs)
    if result.unfinished:
        n = len(result.unfinished)
        log.error("%s not written; run the same command again to retry them", _shards(n))
        return EXIT_ERROR
    return EXIT_OK


def _shards(n: int) -> str:
    return f"{n} shard" if n == 1 else f"{n} shards"


def positive_int(text: str) -> int:
    """An argparse type (embed's --workers, --shard-size): a whole number of at least 1
    (`--workers -1` was a traceback from deep in Ray Data, `--workers 0` the default)."""
    return int(_number(text, int, lambda v: v >= 1, "a whole number of at least 1"))


def positive_float(text: str) -> float:
    """An argparse type (--cpus-per-worker): a number more than 0."""
    return _number(text, float, lambda v: v > 0, "a number more than 0")


def non_negative_float(text: str) -> float:
    """An argparse type (--gpus-per-worker): 0 or more."""
    return _number(text, float, lambda v: v >= 0, "0 or more")


def _number(text: str, kind: type[float], fits: Callable[[float], bool], what: str) -> float:
    """`text` as a finite `kind` that `fits`; argparse's one-line usage error otherwise."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value) or not fits(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _not_root_info(record: logging.LogRecord) -> bool:
    """Records logged on the root logger itself below WARNING are left out."""
    return record.name != "root" or record.levelno >= logging.WARNING


def _pairs(body: dict[str, Any]) -> str:
    """`key: value` lines; a null value as `-` (as `imgsearch jobs ID` shows one)."""
    return "\n".join(f"{k}: {'-' if v is None else shown(v)}" for k, v in body.items())
