"""The bulk commands: `embed` (runs here, on Ray), `import` and `export` (ask the daemon).

Each is one function taking the CLI's Context; their rows are in `commands.COMMANDS`."""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ..client import EXIT_ERROR, EXIT_OK, Context, absolute
from ..config import Config
from ..errors import ImgSearchError, disk_full
from ..formatting import shown

log = logging.getLogger(__name__)

EXIT_USAGE = 2
POLL_S = 0.5


def export_dir(ctx: Context, dir: str, wait: bool) -> int:
    """`imgsearch export DIR`: an export job into a new or empty folder, followed with a
    progress bar (--no-wait: its id)."""
    conn = ctx.connection()
    body = json.dumps({"dir": str(absolute(dir)), "wait": False}).encode()
    job = conn.call("POST", "/export", body=body, content_type="application/json")[1]
    if not wait:
        ctx.emit(job, lambda j: str(j["id"]))
        return EXIT_OK
    job = _follow(ctx, f"/export/{urllib.parse.quote(job['id'], safe='')}", job)
    ctx.emit(job, lambda j: _pairs({k: j[k] for k in ("state", "dir", "rows", "files", "error")}))
    return EXIT_OK if job["state"] == "done" else EXIT_ERROR


def import_dir(ctx: Context, dir: str, path_map: list[str], wait: bool) -> int:
    """`imgsearch import DIR`: POST /import, then follow the job with a progress bar."""
    conn = ctx.connection()
    body = json.dumps({"dir": str(absolute(dir)), "wait": False, "path_map": path_map}).encode()
    job = conn.call("POST", "/import", body=body, content_type="application/json")[1]
    if not wait:
        ctx.emit(job, lambda j: str(j["id"]))
        return EXIT_OK
    job = _follow(ctx, f"/import/{urllib.parse.quote(job['id'], safe='')}", job)

    def text(j: dict[str, Any]) -> str:
        lines = [_pairs({k: j[k] for k in ("state", "imported", "failed")})]
        lines += [f"  {shown(e['file'])} row {e['row']}: {shown(e['error'])}" for e in j["errors"]]
        return "\n".join(lines)

    ctx.emit(job, text)
    return EXIT_OK if job["state"] == "done" else EXIT_ERROR


def _follow(ctx: Context, path: str, job: dict[str, Any]) -> dict[str, Any]:
    """Poll a bulk job until it ends, with a progress bar of its rows on stderr."""
    from tqdm import tqdm

    conn = ctx.connection()
    hide = True if ctx.as_json else None
    with tqdm(total=job["total"], unit="row", disable=hide, file=sys.stderr) as bar:
        while job["state"] in {"queued", "running"}:
            time.sleep(POLL_S)
            job = conn.get(path, timeout=60)
            bar.update(int(job["done"]) - bar.n)
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
        summary = run_embed(options).as_json()
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
    ctx.emit(summary, _pairs)
    return EXIT_OK


def _not_root_info(record: logging.LogRecord) -> bool:
    """Records logged on the root logger itself below WARNING are left out."""
    return record.name != "root" or record.levelno >= logging.WARNING


def _pairs(body: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {shown(v)}" for k, v in body.items())
