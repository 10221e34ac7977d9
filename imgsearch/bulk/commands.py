"""The bulk subcommands: `embed` (runs here, on Ray), `import` and `export` (ask the daemon)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ..config import ENV_PREFIX, OFFLINE_MODEL, Config
from ..errors import ImgSearchError

log = logging.getLogger(__name__)

COMMANDS = frozenset({"embed", "import", "export"})
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
POLL_S = 0.5


def add_commands(sub: Any, client_flags: argparse.ArgumentParser) -> None:
    """Register embed, import and export on the CLI's subparsers."""
    p = sub.add_parser("embed", help="embed an archive into Parquet shards on Ray (no daemon)")
    p.add_argument("sources", nargs="+", metavar="SRC", help="folders, files or fsspec URLs")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable; shared)")
    d = Config()
    p.add_argument("--model", help=f"open_clip model, or {OFFLINE_MODEL} (default {d.model})")
    p.add_argument("--pretrained", help=f"open_clip tag; 'none' = random ({d.pretrained})")
    p.add_argument("--checkpoint", type=Path, help="local open_clip weights file")
    p.add_argument("--model-config", type=Path, help="extra open_clip model config JSON")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, on each worker (default auto)")
    p.add_argument("--batch-size", type=int, help=f"images per model call ({d.batch_size})")
    p.add_argument("--max-upload-mb", type=float, help=f"largest file, MB ({d.max_upload_mb:g})")
    p.add_argument("--max-image-pixels", type=int, help=f"largest image ({d.max_image_pixels})")
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="join this Ray cluster ('auto' reads RAY_ADDRESS); default: a local Ray here",
    )
    p.add_argument("--workers", type=int, help="model replicas (default: as resources allow)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per replica (1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per replica (0)")
    p.add_argument("--shard-size", type=int, default=1000, help="files per shard (1000)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("import", parents=[client_flags], help="import Parquet vector shards")
    p.add_argument("dir", help="folder of .parquet shards (made absolute)")
    p.add_argument(
        "--path-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rewrite a path prefix (repeatable; first match wins)",
    )
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the import with a progress bar (default); --no-wait prints its id",
    )
    p = sub.add_parser("export", parents=[client_flags], help="write the library as Parquet")
    p.add_argument("dir", help="new or empty folder (made absolute)")


def run(ns: argparse.Namespace) -> int:
    """Run one of COMMANDS; the exit code."""
    if ns.command == "embed":
        return embed(ns)
    from .. import client

    def command() -> int:
        data_dir = Path(os.environ.get(f"{ENV_PREFIX}DATA_DIR") or Config().data_dir)
        conn = client.Connection(ns.url, client.read_token(ns.token, data_dir))
        if ns.command == "export":
            target = str(client.absolute(ns.dir))
            body = conn.get("/export", [("dir", target)])
            _out(json.dumps(body) if ns.json else _pairs(body))
            return EXIT_OK
        return import_dir(conn, ns)

    return client.run(command)


def import_dir(conn: Any, ns: argparse.Namespace) -> int:
    """POST /import, then follow the job with a progress bar."""
    from tqdm import tqdm

    body = json.dumps(
        {"dir": str(Path(ns.dir).expanduser().absolute()), "wait": False, "path_map": ns.path_map}
    ).encode()
    job = conn.call("POST", "/import", body=body, content_type="application/json")[1]
    if not ns.wait:
        _out(json.dumps(job) if ns.json else str(job["id"]))
        return EXIT_OK
    path = f"/import/{urllib.parse.quote(job['id'], safe='')}"
    hide = True if ns.json else None
    with tqdm(total=job["total"], unit="row", disable=hide, file=sys.stderr) as bar:
        while job["state"] in {"queued", "running"}:
            time.sleep(POLL_S)
            job = conn.get(path, timeout=60)
            bar.update(int(job["done"]) - bar.n)
            bar.set_postfix_str(f"{job['failed']} bad")
    keys = ("state", "imported", "failed")
    lines = [_pairs({k: job[k] for k in keys})]
    lines += [f"  {e['file']} row {e['row']}: {e['error']}" for e in job["errors"]]
    _out(json.dumps(job) if ns.json else "\n".join(lines))
    return EXIT_OK if job["state"] == "done" else EXIT_ERROR


def embed(ns: argparse.Namespace) -> int:
    """`imgsearch embed SRC... --out DIR`: plan, run on Ray, print the summary."""
    from ..cli import setup_logging
    from ..cluster.runner import EmbedOptions
    from ..cluster.runner import embed as run_embed

    setup_logging(False)
    for noisy in ("ray", "root"):  # Ray's start-up chatter and open_clip's model-build lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    keys: tuple[str, ...] = ("model", "pretrained", "checkpoint", "model_config", "device")
    keys = (*keys, "batch_size", "max_upload_mb", "max_image_pixels")
    try:
        config = Config.load(overrides={k: getattr(ns, k) for k in keys}).resolved()
        address = ns.ray
        options = EmbedOptions(
            sources=list(ns.sources),
            out=ns.out.expanduser().absolute(),
            model=config,
            ray_address=address,
            workers=ns.workers,
            cpus_per_worker=ns.cpus_per_worker,
            gpus_per_worker=ns.gpus_per_worker,
            shard_size=ns.shard_size,
        )
        summary = run_embed(options).as_json()
    except ImgSearchError as exc:
        log.error("%s", exc.message)
        return EXIT_USAGE
    # Files that failed are records (out/failures/), as bad files are for /add: not an error.
    _out(json.dumps(summary) if ns.json else _pairs(summary))
    return EXIT_OK


def _pairs(body: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in body.items())


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
