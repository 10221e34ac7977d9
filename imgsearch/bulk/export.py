"""Export: the library written out in the import format, as the store holds it.

Rows are read by one statement in id order (one snapshot of the table, however long the export
takes) and written as shards of up to ROWS_PER_SHARD rows: the vectors as the store keeps them
(float16, the bytes copied, nothing rounded again), the file facts, metadata as extra string
columns. Shards are written into a hidden staging folder inside the target and moved into it
when every row is out, so a folder an export was cancelled or killed in holds no shard an
import could mistake for a whole library; the next export into it clears the staging folder.
While one shard is written (pyarrow, without the GIL) the next is read on the calling thread
(a second writer thread was no quicker on 2 cores, docs/BENCHMARKS.md).

A daemon runs an export as a child process (`python -m imgsearch.bulk.export`, `main` below:
progress as JSON lines on stdout, SIGTERM to stop, gone with its parent): its reading turns
every row into Python objects, and in the daemon's interpreter that held the GIL that searches
and `/stats` wait for (exports.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cpu import lower_priority
from ..errors import BadRequest, Conflict, ImgSearchError
from ..files import fsync, write_atomic_with
from ..store import UNKNOWN_SHA256, Store
from ..store.upsert import VECTOR_DTYPE
from .columns import export_columns
from .format import schema

log = logging.getLogger(__name__)

ROWS_PER_SHARD = 100_000
READ_ROWS = 20_000  # rows a fetch from SQLite, and a Parquet row group
PIECE = 2_000  # rows turned into Arrow columns at a time (one hold of the GIL)
STAGING = ".imgsearch-export"  # inside the target folder until the export is whole
EXIT_STOPPED = 3  # the child's exit status when stopped (SIGTERM); 2: an error it reported
PR_SET_PDEATHSIG = 1  # prctl(2): a signal for this process when its parent dies


class Stopped(Exception):
    """The export was cancelled, or the daemon is stopping."""


def check_target(folder: Path) -> None:
    """An export may go into `folder`: an absolute path, new (in a folder it can be made in)
    or an empty folder (or one that holds only an unfinished export's staging folder); 400 or
    409 otherwise."""
    if not folder.is_absolute():
        raise BadRequest(f"dir must be an absolute path, got {folder}")
    if folder.exists():
        if not folder.is_dir():
            raise Conflict(f"{folder} exists and is not a folder")
        if any(p.name != STAGING for p in folder.iterdir()):
            raise Conflict(f"{folder} exists and is not an empty folder")
        return
    parent = next(p for p in folder.parents if p.exists())  # (the root exists)
    if not parent.is_dir():
        raise BadRequest(f"cannot create {folder}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadRequest(f"cannot create {folder}: {parent} may not be written")


def prepare_folder(folder: Path) -> Path:
    """check_target, then a new, empty staging folder in `folder` (created if need be)."""
    check_target(folder)
    staging = folder / STAGING
    if staging.exists():
        log.warning("export: clearing %s, left by an export that did not finish", staging)
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise BadRequest(f"cannot create {folder}: {exc.strerror}") from None
    return staging


def shard_table(model_id: str, dim: int, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Rows of EXPORTED_ROW's columns (store/images.py) as a table in the import schema, with
    float16 vectors: stored float16 bytes as they are (rows of older versions, float32,
    converted). Built PIECE rows at a time: each step holds the GIL for a millisecond or two,
    not the ~50 ms a 100,000-row step took (searches and `/stats` wait on it)."""
    sch = schema(model_id, dim, float16=True)
    pieces = [_batch(sch, dim, rows[i : i + PIECE]) for i in range(0, len(rows), PIECE)]
    return pa.Table.from_batches(pieces, sch)


def _batch(sch: pa.Schema, dim: int, rows: Sequence[tuple[Any, ...]]) -> pa.RecordBatch:
    _, paths, sha256, size, mtime_ns, width, height, source, blobs = zip(*rows, strict=True)
    if all(len(b) == 2 * dim for b in blobs):
        vectors = np.frombuffer(b"".join(blobs), VECTOR_DTYPE)
    else:
        vectors = np.concatenate(
            [np.frombuffer(b, VECTOR_DTYPE if len(b) == 2 * dim else "<f4") for b in blobs]
        ).astype(VECTOR_DTYPE)
    sizes = np.fromiter(size, np.int64, len(rows))
    mtimes = np.fromiter(mtime_ns, np.int64, len(rows))
    widths = np.fromiter(width, np.int32, len(rows))
    heights = np.fromiter(height, np.int32, len(rows))
    # (from the buffer: pa.array converts a float16 array value by value, 1.9 us a row)
    flat = pa.Array.from_buffers(pa.float16(), len(vectors), [None, pa.py_buffer(vectors)])
    columns = [
        pa.array(paths, pa.string()),
        pa.FixedSizeListArray.from_arrays(flat, dim),
        pa.array([None if s.startswith(UNKNOWN_SHA256) else s for s in sha256], pa.string()),
        pa.array(sizes, pa.int64(), mask=sizes < 0),
        pa.array(mtimes, pa.int64(), mask=mtimes == -1),  # (an import's unknown; a file of
        # before 1970 has a negative one of its own)
        pa.array(widths, pa.int32(), mask=widths == 0),
        pa.array(heights, pa.int32(), mask=heights == 0),
        pa.array(source, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=sch)


def write_table(path: Path, table: pa.Table) -> None:
    """One shard, atomically (temp, fsync, rename). No dictionary pages or statistics for the
    vectors: both cost more than the rest of the write and help no reader. Once on disk its
    pages are dropped from the page cache: a 10M export writes ~9 GB that would otherwise push
    out the index's and the database's pages that searches read."""

    def write(fh: BinaryIO) -> None:
        pq.write_table(
            table, fh, compression="zstd", row_group_size=READ_ROWS,
            use_dictionary=["path", "sha256", "source"], write_statistics=["path"],
        )  # fmt: skip
        fh.flush()
        os.fsync(fh.fileno())
        if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the cache keeps them
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    write_atomic_with(path, write, durable=True, shared=True)


def write_library(
    store: Store, model_id: str, dim: int, folder: Path, stop: threading.Event,
    progress: Callable[[int, int], None] = lambda rows, files: None,
    rows_per_shard: int = ROWS_PER_SHARD,
) -> tuple[int, int]:  # fmt: skip
    """Every present image into `folder` (new or empty) as part-NNNNN.parquet: (rows, files).
    `progress(rows, files)` as shards are written. Raises Stopped once `stop` is set (the
    staging folder removed: no shard is left in `folder`)."""
    staging = prepare_folder(folder)
    moved: list[Path] = []
    try:
        rows, names = _write_shards(store, model_id, dim, staging, stop, progress, rows_per_shard)
        if stop.is_set():  # cancelled while the last shard was written
            raise Stopped
        for name in names:  # renames in one folder: the shards appear within milliseconds
            (staging / name).replace(folder / name)
            moved.append(folder / name)
        staging.rmdir()
        fsync(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in moved:  # a rename failed part-way: no part of the library stays
            path.unlink(missing_ok=True)
        raise
    log.info("exported %d images to %s in %d files", rows, folder, len(names))
    return rows, len(names)


def _write_shards(
    store: Store, model_id: str, dim: int, staging: Path, stop: threading.Event,
    progress: Callable[[int, int], None], rows_per_shard: int,
) -> tuple[int, list[str]]:  # fmt: skip
    # One read transaction throughout: every shard's rows and metadata from one snapshot (the
    # rows' statement alone ended with its last row, and the last shard's metadata was read
    # after it: a removal or a metadata write meanwhile showed in it).
    snapshot = store.db.reader()
    snapshot.execute("BEGIN")
    try:
        return _write_snapshot(store, model_id, dim, staging, stop, progress, rows_per_shard)
    finally:
        snapshot.execute("COMMIT")  # (a read: nothing to keep or undo)


def _write_snapshot(
    store: Store, model_id: str, dim: int, staging: Path, stop: threading.Event,
    progress: Callable[[int, int], None], rows_per_shard: int,
) -> tuple[int, list[str]]:  # fmt: skip
    names: list[str] = []
    read = 0
    writing: tuple[Future[None], int] | None = None  # the shard being written, rows out then
    with (
        contextlib.closing(_shard_rows(store, rows_per_shard)) as parts,
        ThreadPoolExecutor(1, "export-write") as writer,
    ):
        for part in parts:
            if stop.is_set():
                raise Stopped
            table = shard_table(model_id, dim, part)
            for key, column in export_columns(store, [int(r[0]) for r in part]).items():
                table = table.append_column(pa.field(key, column.type), column)
            if writing is not None:
                writing[0].result()
                progress(writing[1], len(names))
            names.append(f"part-{len(names):05d}.parquet")
            read += len(part)
            writing = (writer.submit(write_table, staging / names[-1], table), read)
        if writing is not None:
            writing[0].result()
        if not names:  # an empty library: one shard of no rows, which imports as such
            names.append("part-00000.parquet")
            write_table(staging / names[-1], shard_table(model_id, dim, []))
    progress(read, len(names))
    return read, names


def _shard_rows(store: Store, rows_per_shard: int) -> Generator[list[tuple[Any, ...]]]:
    """The present rows in lists of up to `rows_per_shard`."""
    part: list[tuple[Any, ...]] = []
    for rows in store.images.present_rows(min(READ_ROWS, rows_per_shard)):
        part += rows
        while len(part) >= rows_per_shard:
            yield part[:rows_per_shard]
            part = part[rows_per_shard:]
    if part:
        yield part


def main(argv: Sequence[str] | None = None) -> int:
    """The child process of a daemon's export job: write_library, with its progress as JSON
    lines on stdout (`{"rows", "files"}`; `{"error", "status"}` before exiting 2), stopped by
    SIGTERM (exit EXIT_STOPPED, nothing left in the folder), at the background priority, and
    sent SIGTERM when the daemon dies (Linux), so no export outlives it."""
    parser = argparse.ArgumentParser(prog="python -m imgsearch.bulk.export")
    parser.add_argument("db", type=Path)
    parser.add_argument("model_id")
    parser.add_argument("dim", type=int)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rows-per-shard", type=int, default=ROWS_PER_SHARD)
    parser.add_argument("--parent", type=int, help="the daemon's pid: exit if it is gone")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lower_priority()  # this thread, and the writer thread it starts
    if args.parent is not None and not _tied_to(args.parent):
        return EXIT_STOPPED
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def progress(rows: int, files: int) -> None:
        print(json.dumps({"rows": rows, "files": files}), flush=True)

    store = Store(args.db)
    try:
        write_library(
            store, args.model_id, args.dim, args.folder, stop, progress, args.rows_per_shard
        )
    except Stopped:
        return EXIT_STOPPED
    except ImgSearchError as exc:  # the folder is no longer empty, or cannot be made
        print(json.dumps({"error": exc.message, "status": exc.status}), flush=True)
        return 2
    except OSError as exc:  # a full disk, a folder taken away
        print(json.dumps({"error": f"cannot write the export: {exc}", "status": 500}), flush=True)
        return 2
    finally:
        store.close()
    return 0


def _tied_to(parent: int) -> bool:
    """Ask Linux for SIGTERM when the parent dies; False if it is gone already."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    return os.getppid() == parent


if __name__ == "__main__":
    sys.exit(main())
