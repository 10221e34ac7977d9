"""The client commands: one function each, and one row each in COMMANDS (its name, help and
arguments). cli.py builds the subcommands from the table and calls `row.run(ctx, **arguments)`,
one keyword per argument, named as argparse names it (`Arg.dest`)."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import client
from .bulk.commands import (
    bulk_job,
    embed,
    export_dir,
    import_dir,
    non_negative_float,
    positive_float,
    positive_int,
)
from .client import (
    EXIT_ERROR,
    EXIT_OK,
    Context,
    ServerError,
    UsageError,
    absolute,
    is_url,
    segment,
)
from .formatting import (
    failure_lines,
    format_bulk_job,
    format_duplicates,
    format_job,
    format_jobs,
    format_results,
    format_watches,
    key_values,
    shown,
)


@dataclass(frozen=True)
class Arg:
    """One argument of a command: the names and keywords of argparse's `add_argument`."""

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        """The keyword the command function receives it as (argparse's rule)."""
        if "dest" in self.options:
            return str(self.options["dest"])
        longs = [n for n in self.names if n.startswith("--")]
        return (longs or list(self.names))[0].lstrip("-").replace("-", "_")


def arg(*names: str, **options: Any) -> Arg:
    """`arg("--limit", type=int, help=...)`: written as add_argument's call would be."""
    return Arg(names, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: `run(ctx, **{a.dest: value for a in args}) -> exit code`."""

    name: str
    help: str
    run: Callable[..., int]
    args: Sequence[Arg] = ()


# -- the commands ----------------------------------------------------------------------------


def stats(ctx: Context) -> int:
    """`imgsearch stats`: key: value lines."""
    body = ctx.connection().get("/stats", timeout=client.QUICK_S)
    ctx.emit(body, lambda b: "\n".join(key_values(b)))
    return EXIT_OK


def remove(ctx: Context, path: str) -> int:
    """`imgsearch remove PATH`: forget a file or a folder's images."""
    if is_url(path):  # else sent as a file under the working directory: "removed 0"
        raise UsageError(
            "remove takes a path, not a URL: an image added by URL is stored under "
            "DATA_DIR/downloads (search shows its path)"
        )
    body = ctx.connection().get("/remove", [("image", str(absolute(path)))])
    ctx.emit(body, lambda b: shown(f"removed {b.get('removed', 0)}"))
    return EXIT_OK


def search(
    ctx: Context,
    image: str | None = None,
    *,
    text: str | None = None,
    upload: bool = False,
    limit: int | None = None,
    compare: Sequence[str] = (),
    rerank: bool = True,
    folder: Sequence[str] = (),
    where: Sequence[str] = (),
) -> int:
    """`imgsearch search IMAGE|--text T`: a table of the nearest stored images."""
    if (image is None) == (text is None):
        raise UsageError("give either an image or --text")
    if upload and (image is None or is_url(image)):
        raise UsageError("--upload needs an image file")
    options: list[tuple[str, str]] = [] if limit is None else [("limit", str(limit))]
    options += [("compare", name) for name in compare]
    options += [] if rerank else [("rerank", "0")]
    options += filter_params(folder, where)
    conn = ctx.connection()
    if text is not None:
        body = conn.get("/search", [("text", text), *options])
    elif upload:
        data, ctype = client.multipart(options, client.local(image or ""))
        body = conn.call("POST", "/search", body=data, content_type=ctype)[1]
    elif is_url(image or ""):
        body = conn.get("/search", [("url", image or ""), *options])
    else:
        body = conn.get("/search", [("image", str(absolute(image or ""))), *options])
    ctx.emit(body, lambda b: format_results(b.get("results", [])))
    return EXIT_OK


def add(
    ctx: Context,
    path: str | None = None,
    *,
    csv: str | None = None,
    update: bool = False,
    wait: bool = True,
    metadata: str | None = None,
    poll_s: float = client.POLL_S,
) -> int:
    """`imgsearch add PATH|URL|--csv FILE [--metadata JSON]`: start an add job and follow it."""
    if (path is None) == (csv is None):
        raise UsageError("give a path or URL, or --csv FILE")
    if metadata is not None and csv is not None:
        raise UsageError("--metadata is for one image; a CSV gives metadata in its columns")
    params = [("wait", "0"), *([("update", "1")] if update else [])]
    conn = ctx.connection()
    if csv is not None:
        data = _csv_body(client.local(csv))
        body = conn.call("POST", "/add", params, body=data, content_type="text/csv")[1]
    else:
        target = path or ""
        what = ("url", target) if is_url(target) else ("image", str(absolute(target)))
        if metadata is None:
            body = conn.get("/add", [what, *params])
        else:
            data = json.dumps({what[0]: what[1], "metadata": _metadata(metadata)}).encode()
            body = conn.call("POST", "/add", params, body=data, content_type="application/json")[1]
    if "job" not in body:  # a daemon without jobs: the add already ran to completion
        if "added" not in body:
            raise client.NotDaemon(conn.base, "its answer to an add names no job")
        return _report(ctx, body)
    if not wait:
        ctx.emit(body, lambda b: shown(b["job"]))
        return EXIT_OK
    with client.detached("job", body["job"]):
        job = client.follow(conn, str(body["job"]), show_progress=not ctx.as_json, poll_s=poll_s)
    return _report(ctx, job)


def _csv_body(path: Path) -> bytes:
    """The CSV for `add --csv` as sent: the cells of its `path` column that are relative
    made absolute from the CSV's own folder (the daemon takes absolute paths only, and cannot
    know where the file was); byte for byte as read otherwise, or when the daemon will refuse
    it anyway (not UTF-8, malformed: its 400 says why)."""
    data = client.read_local(path)
    try:
        text = data.decode("utf-8-sig")
        # As the daemon does (web/addcsv.py): cells as long as the file, not csv's 128 KiB.
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error):
        return data
    names = [name.strip().lower() for name in (rows[0] if rows else [])]
    if "path" not in names:  # (a `path` column names the images when there is one)
        return data
    index, changed = names.index("path"), False
    for row in rows[1:]:
        cell = row[index].strip() if index < len(row) else ""
        if cell and not (is_url(cell) or cell.startswith("~") or Path(cell).is_absolute()):
            row[index], changed = str(absolute(path.parent / cell)), True
    if not changed:
        return data
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _metadata(text: str) -> dict[str, Any]:
    """--metadata: a JSON object (its keys and values are checked by the daemon)."""
    try:
        value = json.loads(client.sendable(text))
    except ValueError as exc:
        raise UsageError(f"--metadata must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError('--metadata must be a JSON object, e.g. \'{"sku": "A-1042"}\'')
    return value


def _report(ctx: Context, job: Mapping[str, Any]) -> int:
    """The summary of a finished add; 1 when the job itself did not finish (not for bad files)."""
    counts = ", ".join(f"{k} {job.get(k, 0)}" for k in ("added", "updated", "skipped", "failed"))
    ctx.emit(job, lambda j: "\n".join([shown(counts), *failure_lines(j)]))
    state = job.get("state", "done")
    if state == "done":
        return EXIT_OK
    reason = f": {job['error']}" if job.get("error") else ""
    client.err(shown(f"error: job {job.get('id')} {state}{reason}"))
    return EXIT_ERROR


def jobs(ctx: Context, job_id: str | None = None, *, cancel: str | None = None) -> int:
    """`imgsearch jobs [ID] [--cancel ID]`: the add jobs, one job (an add, an import or an
    export), or cancel one."""
    if job_id is not None and cancel is not None:
        raise UsageError("give a job id or --cancel ID, not both")
    conn = ctx.connection()
    wanted = cancel if cancel is not None else job_id
    if wanted is None:
        listing = conn.get("/jobs", timeout=client.QUICK_S)
        ctx.emit(listing, lambda b: format_jobs(b.get("jobs", [])))
        return EXIT_OK
    try:
        if cancel is not None:
            body = conn.call("POST", f"/jobs/{segment(wanted)}/cancel")[1]
        else:
            body = conn.get(f"/jobs/{segment(wanted)}", timeout=client.QUICK_S)
    except ServerError as exc:
        # Not an add job's id: an import's or an export's (what they print), each under its
        # own route; one that is neither keeps the add jobs' 404.
        if exc.status != 404 or (bulk := bulk_job(conn, wanted, cancel=cancel is not None)) is None:
            raise
        ctx.emit(bulk, format_bulk_job)
        return EXIT_OK
    ctx.emit(body, format_job)
    return EXIT_OK


def duplicates(
    ctx: Context,
    *,
    threshold: float | None = None,
    folder: Sequence[str] = (),
    where: Sequence[str] = (),
) -> int:
    """`imgsearch duplicates`: a block per cluster of identical files or near copies."""
    params = [] if threshold is None else [("threshold", repr(threshold))]
    params += filter_params(folder, where)
    ctx.emit(ctx.connection().get("/duplicates", params), format_duplicates)
    return EXIT_OK


def filter_params(
    folder: str | Sequence[str] | None, where: Sequence[str]
) -> list[tuple[str, str]]:
    """`folder` (made absolute) and `where` query parameters, each repeatable."""
    folders = [folder] if isinstance(folder, str) else list(folder or ())
    return [("folder", str(absolute(f))) for f in folders] + [("where", w) for w in where]


def watch(ctx: Context, folder: str | None = None, *, stop: bool = False) -> int:
    """`imgsearch watch [DIR] [--stop]`: list watched folders, start or stop watching one."""
    if folder is None:
        if stop:
            raise UsageError("--stop needs a folder")
        body = ctx.connection().get("/watch", timeout=client.QUICK_S)
        ctx.emit(body, lambda b: format_watches(b.get("watches", [])))
        return EXIT_OK
    params = [("dir", str(absolute(folder)))]
    conn = ctx.connection()
    body = conn.call("DELETE", "/watch", params)[1] if stop else conn.get("/watch", params)
    ctx.emit(body, lambda b: format_watches([b]))
    return EXIT_OK


# -- the table: `imgsearch --help` lists the commands in this order ----------------------------

_HERE = "made absolute from the current directory"
_FILTERS = (
    arg(
        "--folder",
        action="append",
        default=[],
        help=f"only images under this folder ({_HERE}; repeatable)",
    ),
    arg(
        "--where",
        action="append",
        default=[],
        metavar="KEY:VALUE",
        help="only images whose metadata KEY is VALUE (repeatable: AND across keys, OR within)",
    ),
)
COMMANDS: tuple[Command, ...] = (
    Command("add", "index a file, folder or URL (a job)", add, (
        arg("path", nargs="?", help=f"file or folder ({_HERE}), or an http(s) URL"),
        arg("--csv", metavar="FILE",
            help="add every image in this CSV's 'path' column (relative paths: from the CSV's "
            "folder) or its 'url' column; its other columns are their metadata"),
        arg("--update", action="store_true", help="re-embed unchanged files too"),
        arg("--wait", action=argparse.BooleanOptionalAction, default=True,
            help="follow the job with a progress bar (default); --no-wait prints its id"),
        arg("--metadata", metavar="JSON",
            help='one image\'s metadata, a JSON object: \'{"sku": "A-1042", "price": 12.5}\''),
    )),
    Command("search", "the stored images nearest to a query", search, (
        arg("image", nargs="?",
            help="query image: a path (sent as an absolute path) or an http(s) URL"),
        arg("--text", help="describe the picture instead (CLIP models only)"),
        arg("--upload", action="store_true", help="send the image's bytes, not its path"),
        arg("--limit", type=int, help="how many results (default 10)"),
        arg("--compare", action="append", default=[], metavar="NAME",
            help="comparator (repeatable)"),
        arg("--no-rerank", dest="rerank", action="store_false", help="keep embedding order"),
        *_FILTERS,
    )),
    Command("stats", "what the daemon holds", stats),
    Command("remove", "forget a file or a folder's images", remove, (
        arg("path", help=f"file or folder; {_HERE} (an image added by URL: its path under "
            "DATA_DIR/downloads, as search shows it)"),
    )),
    Command("duplicates", "identical files and near copies", duplicates, (
        arg("--threshold", type=float,
            help="largest embedding distance of a pair (default 0.15)"),
        *_FILTERS,
    )),
    Command("watch", "list watched folders, watch or stop one", watch, (
        arg("folder", metavar="DIR", nargs="?", help=f"folder to watch ({_HERE})"),
        arg("--stop", action="store_true", help="stop watching DIR (its images stay)"),
    )),
    Command("jobs", "list add jobs; show or cancel a job (an add, import or export)", jobs, (
        arg("job_id", metavar="ID", nargs="?", help="show this job (an add, import or export)"),
        arg("--cancel", metavar="ID", help="cancel this job (an add, import or export)"),
    )),
    Command("import", "import Parquet vector shards (a job)", import_dir, (
        arg("dir", help=f"folder of .parquet shards ({_HERE})"),
        arg("--path-map", action="append", default=[], metavar="OLD=NEW",
            help="rewrite a path prefix (repeatable; first match wins)"),
        arg("--earlier-model", action="store_true",
            help="take shards named by the id an earlier version gave the checkpoint's file"),
        arg("--wait", action=argparse.BooleanOptionalAction, default=True,
            help="follow the import with a progress bar (default); --no-wait prints its id"),
    )),
    Command("export", "write the library as Parquet shards (a job)", export_dir, (
        arg("dir", help=f"new or empty folder ({_HERE})"),
        arg("--wait", action=argparse.BooleanOptionalAction, default=True,
            help="follow the export with a progress bar (default); --no-wait prints its id"),
    )),
    Command("embed", "embed an archive into Parquet shards on Ray (no daemon)", embed, (
        arg("sources", nargs="+", metavar="SRC", help="folders, files or fsspec URLs"),
        arg("--out", type=Path, required=True, help="output folder (resumable; shared)"),
        arg("--model", help="open_clip model, or the bundled model (default: the daemon's)"),
        arg("--pretrained", help="open_clip tag; 'none' = random"),
        arg("--checkpoint", type=Path, help="local open_clip weights file"),
        arg("--model-config", type=Path, help="extra open_clip model config JSON"),
        arg("--device", help="auto, cpu, cuda, cuda:N, on each worker (default auto)"),
        arg("--precision", choices=["auto", "fp32", "bf16", "fp16"],
            help="model precision on each worker (default auto, as the daemon picks)"),
        arg("--batch-size", type=int, help="images per model call (default: measured)"),
        arg("--max-upload-mb", type=float, help="largest file, MB"),
        arg("--max-image-pixels", type=int, help="largest image, pixels"),
        arg("--ray", metavar="ADDRESS",
            help="join this Ray cluster ('auto' reads RAY_ADDRESS); default: a local Ray here"),
        arg("--workers", type=positive_int,
            help="model replicas (default: as resources allow)"),
        arg("--cpus-per-worker", type=positive_float, default=1.0,
            help="CPUs per replica (1)"),
        arg("--gpus-per-worker", type=non_negative_float, default=0.0,
            help="GPUs per replica (0)"),
        arg("--shard-size", type=positive_int, default=1000, help="files per shard (1000)"),
    )),
)  # fmt: skip
