"""Import jobs: Parquet shards of vectors into the catalog, resumable, one job at a time.

Every shard's model and dimension are checked before any row is written (a mismatch is a 400
naming both models). Rows go batch by batch through the ingest core (`add_embedded`: upsert by
path, a row whose size and mtime match what is stored is skipped, a moved file keeps its row)
and are searchable as each batch commits. While one batch is written, the next ones are
encoded by the index (their codes) on two more threads and read and checked on another, so the
encoding (FAISS and torch, which let go of the GIL), the Python of reading and SQLite's writes
run side by side; one pipeline runs through all the job's shards, so it never drains between
them.

Progress is kept in DATA_DIR/imports/<id>.json, rewritten atomically after every batch: the rows
done in each shard. A job that a crash or a shutdown left queued or running is resumed at
start-up from there, skipping what was done. Vectors are scaled to unit length on the way in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..cpu import background_share, lower_priority
from ..embedders.identity import named_by_content, tag_spelled
from ..errors import BadRequest, NotFound, disk_full
from ..ingest import AddReport, Checked, Ingester
from ..store import UNKNOWN_SHA256, Rows
from .batches import Group, Unreadable, groups, shard_batches
from .columns import import_metadata
from .format import BadRow, RowBatch, ShardInfo, fits_in_memory, shard_files, shard_info
from .importjob import ImportJob, PathMap
from .records import PENDING, Records

log = logging.getLogger(__name__)

JOBS_DIR = "imports"
ERRORS_KEPT = 100
IN_FLIGHT = 2  # batches read or encoded ahead of the one being written
# Batches encoded side by side, each on a thread whose OpenMP teams have 1/ENCODERS of the
# cores. One encoder, its products on both cores but the tree's groups on one (the index's
# placer, tree.GROUP_THREADS), was the pipeline's bottleneck: busy throughout while the writer
# waited for it 45% of the time and 0.3 of the two cores stayed idle (py-spy --idle). Two
# encoders of one thread each: 2M of the 10M import at 26,857 rows/s after the training
# against 22,857 (bench/import_rate.py; docs/BENCHMARKS.md "Two encoders").
ENCODERS = 2
T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    """The model this daemon serves, and the ids earlier versions gave its weights (shards
    they wrote name those: identity.py)."""

    model_id: str
    dim: int
    aliases: tuple[str, ...] = ()

    def refusal(self, info: ShardInfo, earlier_model: bool) -> str | None:
        """Why the shard's vectors cannot join this model's (None: they can). An earlier id
        that names a checkpoint's file is taken only with `earlier_model`: any checkpoint of
        that file name had it. Another spelling of this daemon's open_clip tag, or one
        that an earlier version gave these weights otherwise, is always taken."""
        if info.dim == self.dim and self.model_id in {info.model_id, tag_spelled(info.model_id)}:
            return None
        if info.dim == self.dim and info.model_id in self.aliases:
            if earlier_model or not named_by_content(self.model_id):
                return None
            return (
                f"{info.path} holds vectors of {info.model_id}, the id earlier versions gave "
                f"every checkpoint file of that name; this daemon serves {self.model_id}. If "
                "they were made with this daemon's checkpoint, import them with "
                '"earlier_model": true (imgsearch import --earlier-model); nothing was imported'
            )
        return (
            f"{info.path} holds vectors of model {info.model_id} ({info.dim}-d), but this "
            f"daemon serves {self.model_id} ({self.dim}-d); nothing was imported"
        )


def check_folder(folder: Path, served: Served, earlier_model: bool = False) -> list[ShardInfo]:
    """Every shard's footer, checked against the daemon's model before anything is written."""
    infos = [shard_info(p) for p in shard_files(folder)]
    if not infos:
        raise NotFound(f"no .parquet files in {folder}")
    for info in infos:
        why = served.refusal(info, earlier_model)
        if why is not None:
            raise BadRequest(why)
    fits_in_memory(max(infos, key=lambda i: i.group_bytes))
    return infos


def to_rows(batch: RowBatch) -> Rows:
    """Store rows for a checked batch, as columns; unknown size/mtime never match a file (so
    /add embeds it)."""
    n = len(batch.paths)

    def column(name: str, default: Any) -> list[Any]:
        values = batch.facts.get(name)
        if values is None:
            return [default] * n
        return [default if v is None else v for v in values]

    given = zip(batch.paths, batch.facts.get("sha256") or [None] * n, strict=True)
    return Rows(
        batch.paths,
        column("size", -1),
        column("mtime_ns", -1),
        # A unique stand-in for an unknown hash: no two imported rows look byte-identical.
        [f"{UNKNOWN_SHA256}{p}" if s is None else s for p, s in given],
        column("width", 0),
        column("height", 0),
        batch.facts.get("source") or [None] * n,
        batch.vectors,
    )


def ahead(
    items: Iterator[T],
    check: Callable[[T], Checked | None],
    encode: Callable[[Checked], Checked],
    stop: threading.Event,
) -> Iterator[tuple[T, Checked | None]]:
    """The same items (batches) in order, each with its rows checked and encoded: while one
    batch is written, the next ones are read and checked on one thread (Parquet and Python)
    and encoded on up to ENCODERS others, a batch each (FAISS and torch, which let go of the
    GIL), so reading, encoding and SQLite's writes run side by side; all at the background
    priority. Once `stop` is set the items end, and batches not yet read or encoded are left
    (a stop waits only for the encodings under way)."""
    encoders = min(ENCODERS, os.cpu_count() or 1)

    def read() -> tuple[T, Checked | None] | None:
        item = None if stop.is_set() else next(items, None)
        return None if item is None else (item, check(item))

    def coded(read: Future[tuple[T, Checked | None] | None]) -> tuple[T, Checked | None] | None:
        item = read.result()
        if item is None or item[1] is None:
            return item
        return None if stop.is_set() else (item[0], encode(item[1]))

    with (
        ThreadPoolExecutor(1, "import-read", lower_priority) as reader,
        ThreadPoolExecutor(encoders, "import-encode", background_share, (encoders,)) as coder,
    ):
        # The reader runs its tasks in the order given, and the writer takes the encoders'
        # results in that order: batches stay in order.
        queue = deque(coder.submit(coded, reader.submit(read)) for _ in range(IN_FLIGHT))
        while (done := queue.popleft().result()) is not None:
            queue.append(coder.submit(coded, reader.submit(read)))
            yield done


class ImportManager:
    """Queues imports and runs them one after another on a worker thread."""

    def __init__(self, ingester: Ingester, data_dir: Path, batch_rows: int = 20_000) -> None:
        self.ingester = ingester
        self.catalog = ingester.catalog
        self.batch_rows = batch_rows
        self._closing = False
        self._starting = threading.Lock()  # a job's start against its cancel while queued
        # Imports (the writer; its reader and encoder too) at the background priority: requests
        # get the CPU first (cpu.BACKGROUND_NICE).
        self._worker = ThreadPoolExecutor(1, "import", lower_priority)
        self.records = Records(data_dir / JOBS_DIR, "import", ImportJob.from_record)
        for job in self.records.kept():
            if job.state in PENDING:
                log.warning("resuming import %s of %s (%d rows done)", job.id, job.dir, job.done)
                job.state = "queued"
                self._worker.submit(self._run, job)
            else:
                job.ended.set()

    @property
    def served(self) -> Served:
        catalog = self.catalog
        return Served(catalog.model_id, catalog.dim, catalog.model_aliases)

    def submit(
        self, folder: Path, path_map: Sequence[str] = (), earlier_model: bool = False
    ) -> ImportJob:
        """Check the folder's shards (400 on another model) and queue its import.
        `earlier_model`: take shards named by an earlier id of a checkpoint's file (Served)."""
        if not folder.is_absolute():
            raise BadRequest(f"dir must be an absolute path, got {folder}")
        if not folder.is_dir():
            raise NotFound(f"no such folder: {folder}")
        mapping = PathMap.parse(path_map)
        infos = check_folder(folder, self.served, earlier_model)
        total = sum(i.rows for i in infos)
        job = ImportJob(uuid.uuid4().hex[:12], str(folder), mapping.specs(), total)
        job.earlier_model = earlier_model
        job.shards = {i.path.name: 0 for i in infos}
        job.shard_rows = {i.path.name: i.rows for i in infos}
        self.records.add(job)
        self._worker.submit(self._run, job)
        return job

    def get(self, job_id: str) -> ImportJob:
        return self.records.get(job_id)

    def list(self) -> list[ImportJob]:
        return self.records.list()

    def cancel(self, job_id: str, timeout: float = 60.0) -> ImportJob:
        """Stop an import after its batch in flight (what was written stays); one still
        queued ends at once, whatever runs before it."""
        job = self.records.get(job_id)
        with self._starting:
            job.cancelled = True
            job.stop.set()
            if job.state == "queued":  # not started: _run will pass it by
                job.state, job.finished = "cancelled", time.time()
                self.records.end(job)
        job.ended.wait(timeout)
        return job

    def close(self) -> None:
        """Stop the running import after its batch; it resumes at the next start."""
        self._closing = True
        for job in self.records.kept():
            job.stop.set()
        self._worker.shutdown(wait=True)

    def _save(self, job: ImportJob) -> None:
        self.records.save(job)

    def _run(self, job: ImportJob) -> None:
        with self._starting:
            if job.state == "cancelled":  # while it was queued (cancel ended it)
                return
            if not job.stop.is_set():
                job.state, job._clock = "running", time.time()
        try:
            if job.state == "running":
                job.started = job.started or job._clock
                self._save(job)
                # The index trains once, for the size the import makes (not at every
                # threshold on the way), and compacts when the import ends.
                with self.catalog.index.hold(expected=job.total - job.done):
                    self._import(job)
            if job.stop.is_set():  # a shutdown leaves it queued, so the next start resumes it
                job.state = "cancelled" if job.cancelled or not self._closing else "queued"
            else:
                job.state = "done"
        except BadRequest as exc:
            job.state, job.error = "failed", exc.message
        except Exception as exc:  # the worker must survive any job
            if (full := disk_full(exc)) is not None:  # (what was written stays: rerun it)
                log.warning("import %s stopped: %s", job.id, full.message)
                job.state, job.error = "failed", full.message
            else:
                log.exception("import %s failed", job.id)
                job.state, job.error = "failed", f"unexpected error: {exc}"
        finally:
            job.finished = None if job.state == "queued" else time.time()
            self.records.end(job)
            log.info(
                "import %s %s: %d rows, %d failed", job.id, job.state, job.imported, job.failed
            )

    def _import(self, job: ImportJob) -> None:
        rename = PathMap.parse(job.path_map) if job.path_map else None
        items = shard_batches(self._shards(job), job.shards, self.batch_rows, rename)
        batches = groups(items, self.batch_rows)
        for group, checked in ahead(batches, self._check, self.ingester.encode_checked, job.stop):
            if job.stop.is_set():
                return
            if isinstance(group, Unreadable):
                self._skip_rest(job, group.info, _why(group.error))
                continue
            report = AddReport()
            if checked is not None:  # one transaction per group
                self.ingester.add_embedded(checked, report=report, batch_size=group.rows)
                for info, batch in group.parts:
                    refused = import_metadata(self.catalog.store, str(info.path), batch)
                    room = max(0, ERRORS_KEPT - len(job.errors))
                    job.errors += [r.as_json() for r in refused[:room]]
            self._record(job, group, report)
            self.catalog.index.make_room(job.stop)  # the index keeps up (bounded memory)

    def _shards(self, job: ImportJob) -> Iterator[ShardInfo | Unreadable]:
        """The job's own shards, in order, those not done read again (a shard added to the
        folder since is not the job's); one gone or changed to another model since is an
        Unreadable, the others go on."""
        served = self.served
        model, dim = served.model_id, served.dim
        for name, done in job.shards.items():
            path = Path(job.dir) / name
            rows = job.shard_rows.get(name, done)
            if done >= rows and name in job.shard_rows:
                continue
            try:
                info = shard_info(path)
            except BadRequest as exc:
                yield Unreadable(ShardInfo(path, model, dim, rows), _Gone(exc.message))
                continue
            if served.refusal(info, job.earlier_model) is not None:
                why = f"it now holds vectors of model {info.model_id} ({info.dim}-d)"
                yield Unreadable(ShardInfo(path, model, dim, rows), _Gone(why))
                continue
            if name in job.shard_rows and info.rows != rows:  # (rewritten: its rows are others)
                why = f"it was changed since the import was queued ({info.rows} rows, not {rows})"
                yield Unreadable(ShardInfo(path, model, dim, rows), _Gone(why))
                continue
            yield info

    def _check(self, group: Group | Unreadable) -> Checked | None:
        """A group's rows checked (None: no rows); encoded by the index next (ahead)."""
        if isinstance(group, Unreadable):
            return None
        batch = group.batch()
        if not batch.paths:
            return None
        return self.ingester.check_embedded(to_rows(batch))

    def _skip_rest(self, job: ImportJob, info: ShardInfo, reason: str) -> None:
        """Count a shard's unread rows as failed (one error for them all) and move on."""
        done = job.shards[info.path.name]
        log.warning("import %s: %s from row %d: %s", job.id, info.path, done, reason)
        job.failed += max(0, info.rows - done)
        job._done_here += max(0, info.rows - done)
        job.shards[info.path.name] = max(done, info.rows)
        if len(job.errors) < ERRORS_KEPT:
            job.errors.append(BadRow(str(info.path), done, reason).as_json())
        self._save(job)

    def _record(self, job: ImportJob, group: Group, report: AddReport) -> None:
        for info, batch in group.parts:
            handled = len(batch.paths) + len(batch.bad)
            job.shards[info.path.name] += handled
            job._done_here += handled
            job.failed += len(batch.bad)
            room = ERRORS_KEPT - len(job.errors)
            job.errors += [b.as_json() for b in batch.bad[: max(0, room)]]
            for bad in batch.bad[:5]:
                log.warning("import: %s row %d: %s", bad.file, bad.row, bad.reason)
        refused = _refused(group, report)
        job.failed += len(refused)
        job.errors += [r.as_json() for r in refused[: max(0, ERRORS_KEPT - len(job.errors))]]
        job.imported += report.added + report.updated + report.moved
        job.skipped += report.skipped
        self._save(job)


class _Gone(Exception):
    """A shard of a job that is no longer what the job was made of (gone, another model)."""


def _why(error: Exception) -> str:
    return str(error) if isinstance(error, _Gone) else f"cannot read the file: {error}"


def _refused(group: Group, report: AddReport) -> list[BadRow]:
    """The rows of `group` not imported though the format let them by: those the ingest
    refused (report.errors), and those whose path a later row of the group repeats (the
    later row is written: add_embedded), with their file and row."""
    # One error a path (the ingest may report a path once for each of its rows: refused
    # outside the allowed folders before the rows were made one), each row counted once.
    refused = {e.image: e.error for e in report.errors}
    where: dict[str, tuple[str, int]] = {}
    out: list[BadRow] = []
    for info, batch in group.parts:
        for path, row in zip(batch.paths, batch.rows, strict=True):
            if (earlier := where.get(path)) is not None:
                why = refused.get(path) or (
                    f"the same path as row {row} of {info.path}, which was imported instead"
                )
                out.append(BadRow(*earlier, why))
            where[path] = (str(info.path), row)
    found = [(where.get(path, ("", -1)), error) for path, error in refused.items()]
    return out + [BadRow(file, row, error) for (file, row), error in found]


__all__ = ["BadRow", "ImportJob", "ImportManager", "PathMap", "Served", "check_folder"]
