"""Command line: `imgsearch serve [flags]` (the default) starts the daemon; `add`, `search`,
`stats`, `remove`, `duplicates`, `watch` and `jobs` talk to a running one (see client.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import AUTO_TOKEN, ENV_PREFIX, LOOPBACK_HOSTS, OFFLINE_MODEL, Config
from .errors import ImgSearchError

log = logging.getLogger("imgsearch")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    d = Config()
    add = parser.add_argument
    # Defaults are None so that unset flags leave IMGSEARCH_* variables in force.
    add("--host", help=f"address to bind (default {d.host})")
    add("--port", type=int, help=f"port to listen on (default {d.port})")
    add("--data-dir", type=Path, help=f"database and index folder (default ./{d.data_dir})")
    add("--model", help=f"open_clip model name, or {OFFLINE_MODEL} (default {d.model})")
    add("--pretrained", help=f"open_clip pretrained tag; 'none' = random (default {d.pretrained})")
    add("--checkpoint", type=Path, help="local open_clip weights file (for offline machines)")
    add("--model-config", type=Path, help="extra open_clip model config JSON to register")
    add("--device", help="auto, cpu, cuda, cuda:N (default auto: cuda when available)")
    add("--batch-size", type=int, help=f"images per model call when indexing ({d.batch_size})")
    add("--workers", type=int, help=f"decode threads when indexing (default {d.workers})")
    add("--threads", type=int, help=f"torch threads per model call (default {d.threads})")
    add("--max-upload-mb", type=float, help=f"largest upload or file, MB ({d.max_upload_mb:g})")
    add("--max-image-pixels", type=int, help=f"largest image, pixels ({d.max_image_pixels})")
    add(
        "--max-pending-searches",
        type=int,
        help=f"searches in progress before new ones get 503 ({d.max_pending_searches})",
    )
    add(
        "--max-pending-adds",
        type=int,
        help=f"adds in progress or queued before new ones get 503 ({d.max_pending_adds})",
    )
    add(
        "--download-timeout",
        type=float,
        help=f"seconds for one URL download, all of it ({d.download_timeout:g})",
    )
    add(
        "--download-concurrency",
        type=int,
        help=f"URL downloads at once, per add job and for searches ({d.download_concurrency})",
    )
    add(
        "--token",
        help=f"require this bearer token on every route but /health; '{AUTO_TOKEN}' "
        "generates one into DATA_DIR/token",
    )
    add(
        "--allow-host",
        dest="allow_hosts",
        action="append",
        metavar="NAME",
        help="also accept this Host header name (repeatable); loopback names always pass",
    )
    add(
        "--allow-root",
        dest="allow_roots",
        action="append",
        type=Path,
        metavar="DIR",
        help="only read images under this folder (repeatable); default: anywhere",
    )
    add(
        "--watch",
        action="append",
        type=Path,
        metavar="DIR",
        help="keep this folder indexed as files change (repeatable; remembered across restarts)",
    )
    add("-v", "--verbose", action="store_true", default=None, help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsearch",
        description="Local reverse image search daemon. Every flag also reads an "
        f"{ENV_PREFIX}<FLAG> environment variable (e.g. {ENV_PREFIX}PORT).",
    )
    parser.add_argument("--version", action="version", version=f"imgsearch {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_flags(sub.add_parser("serve", help="run the daemon (the default command)"))
    _client_commands(sub)
    return parser


def _client_flags() -> argparse.ArgumentParser:
    from .client import DEFAULT_URL

    flags = argparse.ArgumentParser(add_help=False)
    url = os.environ.get(f"{ENV_PREFIX}URL") or DEFAULT_URL
    flags.add_argument("--url", default=url, help=f"the daemon ({ENV_PREFIX}URL; default {url})")
    flags.add_argument(
        "--token",
        default=os.environ.get(f"{ENV_PREFIX}TOKEN") or None,
        help=f"bearer token ({ENV_PREFIX}TOKEN); '{AUTO_TOKEN}' reads DATA_DIR/token",
    )
    flags.add_argument("--json", action="store_true", help="print the server's JSON as is")
    return flags


def _client_commands(sub: Any) -> None:
    common = [_client_flags()]
    p = sub.add_parser("add", parents=common, help="index a file, folder or URL (a job)")
    p.add_argument(
        "path",
        nargs="?",
        help="file or folder (made absolute from the current directory), or an http(s) URL",
    )
    p.add_argument("--csv", metavar="FILE", help="add every URL in this CSV's 'url' column")
    p.add_argument("--update", action="store_true", help="re-embed unchanged files too")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the job with a progress bar (default); --no-wait prints its id",
    )
    p = sub.add_parser("search", parents=common, help="the stored images nearest to a query")
    p.add_argument(
        "image", nargs="?", help="query image: a path (sent as an absolute path) or an http(s) URL"
    )
    p.add_argument("--text", help="describe the picture instead (CLIP models only)")
    p.add_argument("--upload", action="store_true", help="send the image's bytes, not its path")
    p.add_argument("--limit", type=int, help="how many results (default 10)")
    p.add_argument(
        "--compare", action="append", default=[], metavar="NAME", help="comparator (repeatable)"
    )
    p.add_argument("--no-rerank", dest="rerank", action="store_false", help="keep embedding order")
    _filter_flags(p)
    sub.add_parser("stats", parents=common, help="what the daemon holds")
    p = sub.add_parser("remove", parents=common, help="forget a file or a folder's images")
    p.add_argument("path", help="file or folder; made absolute from the current directory")
    p = sub.add_parser("duplicates", parents=common, help="identical files and near copies")
    p.add_argument(
        "--threshold", type=float, help="largest embedding distance of a pair (default 0.15)"
    )
    _filter_flags(p)
    p = sub.add_parser("watch", parents=common, help="list watched folders, watch or stop one")
    p.add_argument("dir", nargs="?", help="folder to watch (made absolute from the current one)")
    p.add_argument("--stop", action="store_true", help="stop watching DIR (its images stay)")
    p = sub.add_parser("jobs", parents=common, help="list add jobs, show one, or cancel one")
    p.add_argument("id", nargs="?", help="show this job")
    p.add_argument("--cancel", metavar="ID", help="cancel this job")


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--folder", action="append", default=[], help="only images under this folder (repeatable)"
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY:VALUE",
        help="only images whose metadata KEY is VALUE (repeatable: AND across keys, OR within)",
    )


def client_command(ns: argparse.Namespace) -> int:
    """Run one client subcommand against the daemon at --url."""
    from . import client

    def command() -> int:
        data_dir = Path(os.environ.get(f"{ENV_PREFIX}DATA_DIR") or Config().data_dir)
        conn = client.Connection(ns.url, client.read_token(ns.token, data_dir))
        if ns.command == "add":
            return client.add(
                conn, ns.path, csv=ns.csv, update=ns.update, wait=ns.wait, as_json=ns.json
            )
        if ns.command == "search":
            return client.search(
                conn,
                ns.image,
                text=ns.text,
                upload=ns.upload,
                limit=ns.limit,
                compare=ns.compare,
                rerank=ns.rerank,
                folder=ns.folder,
                where=ns.where,
                as_json=ns.json,
            )
        if ns.command == "remove":
            return client.remove(conn, ns.path, as_json=ns.json)
        if ns.command == "duplicates":
            return client.duplicates(
                conn, threshold=ns.threshold, folder=ns.folder, where=ns.where, as_json=ns.json
            )
        if ns.command == "watch":
            return client.watch(conn, ns.dir, stop=ns.stop, as_json=ns.json)
        if ns.command == "jobs":
            return client.jobs(conn, ns.id, cancel=ns.cancel, as_json=ns.json)
        return client.stats(conn, as_json=ns.json)

    return client.run(command)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Library warnings (Pillow on damaged files, ...) go to the log, not bare to stderr.
    logging.captureWarnings(True)
    # --max-image-pixels is the limit; Pillow's hard decompression-bomb error stays in force.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


MODEL_FIELDS = ("model", "pretrained", "checkpoint")


def serve(args: dict[str, Any]) -> int:
    from aiohttp import web

    from .web import create_app

    config = Config.load(overrides=args).resolved()
    setup_logging(config.verbose)
    if config.host not in LOOPBACK_HOSTS:
        log.warning(
            "binding %s: other machines can reach this daemon (token required)", config.host
        )
    # No model flag or variable: a first run without network may use the bundled model.
    chosen = [args.get(k) for k in MODEL_FIELDS] + [
        os.environ.get(f"{ENV_PREFIX}{k.upper()}") for k in MODEL_FIELDS
    ]
    app = create_app(config, model_fallback=all(v is None for v in chosen))
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        print=lambda msg: log.info("%s", msg.strip()),
        shutdown_timeout=8.0,
        access_log=log.getChild("access") if config.verbose else None,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in {"-h", "--help", "--version"}:
        argv.insert(0, "serve")
    ns = parser.parse_args(argv)
    if ns.command != "serve":
        sys.exit(client_command(ns))
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    try:
        code = serve(args)
    except ImgSearchError as exc:
        logging.basicConfig()
        log.error("%s", exc.message)
        code = 2
    sys.exit(code)
