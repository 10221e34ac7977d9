"""Command line: `imgsearch serve [flags]` (the default) starts the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
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
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if verbose else logging.WARNING)


def serve(args: dict[str, Any]) -> int:
    from aiohttp import web

    from .web import create_app

    config = Config.load(overrides=args).resolved()
    setup_logging(config.verbose)
    if config.host not in LOOPBACK_HOSTS:
        log.warning(
            "binding %s: other machines can reach this daemon (token required)", config.host
        )
    app = create_app(config)
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
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    try:
        code = serve(args)
    except ImgSearchError as exc:
        logging.basicConfig()
        log.error("%s", exc.message)
        code = 2
    sys.exit(code)
