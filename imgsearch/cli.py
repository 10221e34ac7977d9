"""Command line: `imgsearch serve [flags]` (the default) starts the daemon; every other command
is a row of the COMMANDS table in commands.py (add, search, stats, remove, duplicates, watch,
jobs, and bulk/commands.py's import and export, which talk to a running daemon, and embed,
which runs here on Ray). Global options go before or after the command."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import socket
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .client import POLL_TIMEOUT_S, QUICK_S, Context, UsageError, checked_timeout, run
from .commands import COMMANDS, Arg, arg
from .config import AUTO_TOKEN, ENV_PREFIX, LOOPBACK_HOSTS, OFFLINE_MODEL, Config
from .errors import ConfigError, ImgSearchError, disk_full

log = logging.getLogger("imgsearch")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    d = Config()
    add = parser.add_argument
    # Defaults are None so that unset flags leave IMGSEARCH_* variables in force.
    add("--host", help=f"address to bind (default {d.host})")
    add("--port", type=int, help=f"port to listen on (default {d.port})")
    add("--model", help=f"open_clip model name, or {OFFLINE_MODEL} (default {d.model})")
    add("--pretrained", help=f"open_clip pretrained tag; 'none' = random (default {d.pretrained})")
    add("--checkpoint", type=Path, help="local open_clip weights file (for offline machines)")
    add("--model-config", type=Path, help="extra open_clip model config JSON to register")
    add("--device", help="auto, cpu, cuda, cuda:N (default auto: cuda when available)")
    add("--batch-size", type=int, help="images per model call (default 0: measured per model)")
    add("--precision", help="auto|fp32|bf16|fp16 (auto: native bf16/fp16 if a self-check agrees)")
    add("--precompute", help="auto|on|off: verify features in the background after adds (auto)")
    add("--workers", type=int, help=f"decode threads when indexing (default {d.workers})")
    add("--threads", type=int, help=f"torch threads per model call (default {d.threads})")
    add(
        "--index",
        choices=("auto", "exact"),
        help="vector index: auto (exact while small, IVF beyond) or exact (default auto)",
    )
    add(
        "--recall",
        type=float,
        help=f"recall@10 the IVF index is tuned for against exact search ({d.recall:g}; "
        "lower is faster)",
    )
    add(
        "--warm-database",
        help="auto|on|off: read the database file into the page cache after a start, where it "
        "fits in the memory available (auto: once searches find the disk slow; default auto)",
    )
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


# Options every command takes, before or after its name; `serve` refuses the client-only ones.
# Their defaults are applied in _context (and by Config for serve), so argparse leaves them
# unset (SUPPRESS): a value given after the command is never overwritten by the top level's.
GLOBAL_ARGS: tuple[Arg, ...] = (
    arg("--data-dir", type=Path, help=f"database and index folder (default ./{Config().data_dir})"),
    arg(
        "--token",
        help=f"bearer token ({ENV_PREFIX}TOKEN): serve requires it on every route but /health, "
        f"the client commands send it; '{AUTO_TOKEN}': serve generates one into "
        "DATA_DIR/token, the client commands read it from there",
    ),
    arg("-v", "--verbose", action="store_true", help="debug logging (client: every request)"),
)
CLIENT_ARGS: tuple[Arg, ...] = (
    arg(
        "--url",
        help=f"the daemon, for client commands ({ENV_PREFIX}URL; default http://127.0.0.1:PORT, "
        f"PORT as serve reads it: {ENV_PREFIX}PORT, else {Config().port})",
    ),
    arg("--json", action="store_true", help="client commands: print the server's JSON as is"),
    arg(
        "--timeout",
        metavar="SECONDS",
        help=f"client commands: how long to wait for each answer ({ENV_PREFIX}TIMEOUT; default "
        f"{QUICK_S:g} for stats, jobs and the watch list, {POLL_TIMEOUT_S:g} for each poll while "
        "add, import or export wait, no limit for the others; 0: no limit)",
    ),
)
CLIENT_ONLY = "--url, --json and --timeout are for the client commands, not serve"
TOP_LEVEL = frozenset({"-h", "--help", "--version"})


def _add_args(parser: argparse.ArgumentParser, args: Sequence[Arg], **defaults: Any) -> None:
    for a in args:
        parser.add_argument(*a.names, **{**a.options, **defaults})


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, `serve`, and a subcommand per COMMANDS row."""
    parser = argparse.ArgumentParser(
        prog="imgsearch",
        description="Local reverse image search daemon. Every flag also reads an "
        f"{ENV_PREFIX}<FLAG> environment variable (e.g. {ENV_PREFIX}PORT). Global options "
        "may come before or after the command.",
        epilog="`imgsearch COMMAND --help` lists a command's own options (serve: the daemon's).",
    )
    parser.add_argument("--version", action="version", version=f"imgsearch {__version__}")
    _add_args(parser, [*GLOBAL_ARGS, *CLIENT_ARGS], default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = sub.add_parser("serve", help="run the daemon (the default command)")
    _add_args(serve_parser, GLOBAL_ARGS, default=argparse.SUPPRESS)
    _serve_flags(serve_parser)
    for row in COMMANDS:
        p = sub.add_parser(row.name, help=row.help, description=row.help)
        _add_args(p, [*GLOBAL_ARGS, *CLIENT_ARGS], default=argparse.SUPPRESS)
        _add_args(p, row.args)
    return parser


def with_command(argv: Sequence[str]) -> list[str]:
    """argv with `serve` put where the command goes when none is named (after global options)."""
    takes_value = {
        n for a in [*GLOBAL_ARGS, *CLIENT_ARGS] if "action" not in a.options for n in a.names
    }
    switches = {n for a in [*GLOBAL_ARGS, *CLIENT_ARGS] if "action" in a.options for n in a.names}
    i = 0
    while i < len(argv) and (argv[i] in switches or argv[i].split("=", 1)[0] in takes_value):
        i += 1 if argv[i] in switches or "=" in argv[i] else 2
    word = argv[i] if i < len(argv) else "-"
    if i > len(argv) or not word.startswith("-") or word in TOP_LEVEL:
        return list(argv)  # a command (or a word argparse will call an invalid choice), or help
    return [*argv[:i], "serve", *argv[i:]]


def run_command(ns: argparse.Namespace) -> int:
    """Run one client command (a COMMANDS row) with the global options as its Context."""
    row = next(r for r in COMMANDS if r.name == ns.command)
    kwargs = {a.dest: getattr(ns, a.dest) for a in row.args}
    with _client_logging(bool(vars(ns).get("verbose"))):  # _context's errors are run's to show
        return run(lambda: row.run(_context(vars(ns)), **kwargs))


@contextlib.contextmanager
def _client_logging(verbose: bool) -> Iterator[None]:
    """-v: the client's log (a line per request) on stderr while the command runs."""
    if not verbose:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _context(given: dict[str, Any]) -> Context:
    """The global options as given, else their IMGSEARCH_* variables, else the defaults."""

    def option(name: str) -> str | None:
        return given.get(name) or os.environ.get(f"{ENV_PREFIX}{name.upper()}") or None

    return Context(
        url=option("url") or default_url(os.environ),
        token=option("token"),
        data_dir=Path(option("data_dir") or Config().data_dir),
        as_json=bool(given.get("json")),
        verbose=bool(given.get("verbose")),
        timeout=checked_timeout(option("timeout")),
    )


def default_url(environ: Mapping[str, str]) -> str:
    """The daemon's URL when neither --url nor IMGSEARCH_URL gives one: this machine, on the
    port IMGSEARCH_PORT gives `serve` (a container's variables are its daemon's and `docker
    exec`'s alike), at IMGSEARCH_HOST where that is a loopback name (a daemon on ::1 only),
    else 127.0.0.1 (where a daemon on 0.0.0.0 answers too)."""
    port = environ.get(f"{ENV_PREFIX}PORT", "").strip() or str(Config().port)
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise UsageError(f"invalid {ENV_PREFIX}PORT '{port}': a port number, 0..65535")
    host = environ.get(f"{ENV_PREFIX}HOST", "").strip()
    host = host if host in LOOPBACK_HOSTS else "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{int(port)}"


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Library warnings (Pillow on damaged files, ...) go to the log, not bare to stderr.
    logging.captureWarnings(True)
    # --max-image-pixels is the limit; Pillow's hard decompression-bomb error stays in force.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


MODEL_FIELDS = ("model", "pretrained", "checkpoint")


# The interpreter as a daemon that imports millions of rows wants it (set once the service is
# up, _tune_interpreter). An import makes ~5 objects a row on three threads; with Python's
# default young-generation threshold (700 allocations) a collection ran every 700 of them and
# the older generations' ran every few batches, ~20% of the read-ahead thread's samples in
# py-spy, all holding the GIL that the encoding thread waits for between its torch calls (a
# third of its time). A waiting thread takes the GIL after the switch interval (5 ms by
# default); 1 ms hands it over sooner, for the encoding's ~1,000 calls a batch and for
# searches alike. Both: 12,442-12,903 rows/s after the training against 11,718-12,126 (two
# and three runs), 3% less CPU a row; a 10M import 1.25x (bench/import_rate.py, bench/scale.py,
# docs/BENCHMARKS.md). Cyclic garbage waits for at most GC_YOUNG more allocations.
GC_YOUNG = 50_000
SWITCH_INTERVAL_S = 0.001


async def _tune_interpreter(_app: object) -> None:
    """tune_interpreter, once the service is up."""
    tune_interpreter()


def tune_interpreter() -> None:
    """Move what start-up made (modules, the model, the index's objects) out of the garbage
    collector's reach (a bulk import's full collections scanned them all: bench/gc_freeze.py),
    collect the youngest generation every GC_YOUNG allocations, hand the GIL over after
    SWITCH_INTERVAL_S (benchmarks call it to run as the daemon does)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def serve(args: dict[str, Any]) -> int:
    from aiohttp import web

    from .web import create_app
    from .web.guard import TokenMask
    from .web.starting import quit_while_starting, stop_gracefully

    config = Config.load(overrides=args).resolved()
    setup_logging(config.verbose)
    if config.host not in LOOPBACK_HOSTS:
        log.warning(
            "binding %s: other machines can reach this daemon (token required)", config.host
        )
    # Bound before the model and the index load (seconds to minutes): a taken port is said then.
    sockets = bind(config.host, config.port)
    # No model flag or variable (one set empty is unset): a first run without network may
    # use the bundled model.
    chosen = [args.get(k) for k in MODEL_FIELDS] + [
        os.environ.get(f"{ENV_PREFIX}{k.upper()}", "").strip() or None for k in MODEL_FIELDS
    ]
    app = create_app(config, model_fallback=all(v is None for v in chosen))
    access = log.getChild("access")
    access.addFilter(TokenMask())  # -v logs each request line: never with its ?token=
    # A signal while the service opens ends the process at once (web/starting.py); the
    # cleanup_ctx that opens it runs first of on_startup, the appended ones after it.
    app.on_startup.insert(0, quit_while_starting)
    app.on_startup.append(stop_gracefully)
    app.on_startup.append(_tune_interpreter)
    web.run_app(
        app,
        sock=sockets,
        print=lambda msg: log.info("%s", msg.strip()),
        shutdown_timeout=8.0,
        access_log=access if config.verbose else None,
    )
    return 0


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of `host` (not listening: until the daemon is up a
    connection is refused, as before), with SO_REUSEADDR as aiohttp's own sites set it; a
    ConfigError (one line, exit 2) where that cannot be done."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {_why(exc)}") from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: IPv4 has a socket of its own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    continue  # a family not enabled here (asyncio skips it too, bpo-30945)
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"port {port} on {host} is in use") from None
                raise ConfigError(f"cannot listen on {host}:{port}: {_why(exc)}") from None
            sock.setblocking(False)
            bound.append(sock)
        if not bound:
            raise ConfigError(f"cannot listen on {host}:{port}: no address to bind")
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _why(exc: OSError | UnicodeError) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def main(argv: Sequence[str] | None = None) -> None:
    """`imgsearch [global options] [COMMAND] [options]`; exits with the command's code."""
    parser = build_parser()
    ns = parser.parse_args(with_command(sys.argv[1:] if argv is None else argv))
    if ns.command != "serve":
        sys.exit(run_command(ns))
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    if {"url", "json", "timeout"} & args.keys():
        parser.error(CLIENT_ONLY)
    before = set(threading.enumerate())
    try:
        code = serve(args)
    except Exception as exc:  # one line for what the user can act on, a traceback otherwise
        said = exc if isinstance(exc, ImgSearchError) else disk_full(exc)
        if said is None:
            raise
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)  # (as setup_logging's)
        log.error("%s", said.message)
        code = 2
    leave(code, before)


def leave(code: int, before: set[threading.Thread]) -> NoReturn:
    """Exit the daemon with `code`. Where background threads it started (not in `before`)
    are still alive (an index build the index stopped waiting for, mid-way through a
    k-means; a tree being made), without the interpreter's finalization: C++ libraries'
    static destructors running under a thread still in their code abort the process
    ("terminate called without an active exception", exit -6, seen on a SIGTERM during a
    1280-d training). By then SQLite is closed and every write committed (what a build leaves
    half-written is what a kill -9 leaves), and the logs are flushed here."""
    alive = [t.name for t in threading.enumerate() if t.daemon and t.is_alive() and t not in before]
    if not alive:
        sys.exit(code)
    log.info("exiting with background threads left: %s", ", ".join(sorted(alive)))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
