"""Export jobs: `GET /export?dir=...` (or `POST /export`) queues one; they run one at a time, with
progress, an ETA and cancel, like imports. Each runs in a child process at the background
priority (`python -m imgsearch.bulk.export`: export.main), which a worker thread follows: in the
daemon's own interpreter the export's reading held the GIL that searches and `/stats` wait for
(a 9M export beside a search load: search p99 67 -> 41 ms, `/stats` p99 27 -> 10 ms, and the
daemon's RSS no longer grows by the shards in hand; bench/export.py, docs/BENCHMARKS.md).
Cancelling sends it SIGTERM; whatever way it ends short of done, its staging folder is cleared
here too (a child killed outright cannot clear it itself).

A job's record is saved in DATA_DIR/exports/ID.json as it goes, so the list survives a restart;
an export that a restart or a crash stopped shows as `interrupted` (its staging folder is
cleared by the next export into that folder: run it again). An export is not resumed: it is a
read of the library, minutes at 10M images, and one snapshot of it is what a copy should be.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..cpu import lower_priority
from ..errors import Conflict, disk_full
from .export import EXIT_STOPPED, ROWS_PER_SHARD, STAGING, check_target
from .records import PENDING, Records

log = logging.getLogger(__name__)

JOBS_DIR = "exports"


@dataclass
class ExportJob:
    """One export of the library into a folder, and how far it got."""

    id: str
    dir: str
    total: int  # present images when it was queued (rows added meanwhile go out too)
    state: str = "queued"
    rows: int = 0  # in shards written so far (left in the folder only once it is done)
    files: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)
    cancelled: bool = field(default=False, repr=False)  # stopped by a user, not a shutdown
    _child: subprocess.Popen[str] | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started if self.started else 0.0
        rate = self.rows / elapsed if elapsed > 0 and self.rows else None
        eta = None
        if rate and self.state == "running":
            eta = round(max(0, self.total - self.rows) / rate, 1)
        return {
            **self.record(),
            "done": self.rows,
            "seconds": round(elapsed, 3),
            "rows_per_s": round(rate, 1) if rate else None,
            "eta_s": eta,
        }

    def record(self) -> dict[str, Any]:
        """What is persisted (and shown): everything but the rates."""
        return {
            "id": self.id,
            "kind": "export",
            "dir": self.dir,
            "state": self.state,
            "total": self.total,
            "rows": self.rows,
            "files": self.files,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ExportJob:
        job = cls(data["id"], data["dir"], data["total"], data["state"], data["rows"])
        job.files, job.error = data["files"], data.get("error")
        job.created, job.started, job.finished = data["created"], data["started"], data["finished"]
        return job


class ExportManager:
    """Queues exports and runs them one after another on a worker thread."""

    def __init__(self, catalog: Catalog, data_dir: Path) -> None:
        self.catalog = catalog
        # The child's command (before its arguments): tests put a slower writer in it.
        self.command = [sys.executable, "-m", "imgsearch.bulk.export"]
        self.rows_per_shard = ROWS_PER_SHARD
        self._closing = False
        self._starting = threading.Lock()  # a job's start against its cancel while queued
        self._worker = ThreadPoolExecutor(1, "export", lower_priority)
        self.records = Records(data_dir / JOBS_DIR, "export", ExportJob.from_record)
        for job in self.records.kept():
            if job.state in PENDING:
                log.warning("export %s into %s was interrupted: run it again", job.id, job.dir)
                job.state, job.finished = "interrupted", job.finished or time.time()
                try:
                    self._save(job)
                except OSError as exc:  # (a full disk: the daemon starts all the same)
                    log.warning("export %s: its record not saved: %s", job.id, exc)
            job.ended.set()

    def submit(self, folder: Path) -> ExportJob:
        """Check the folder (new or empty: 409 otherwise) and queue an export into it."""
        check_target(folder)  # refused now, not when the job starts (and again then)
        job = ExportJob(uuid.uuid4().hex[:12], str(folder), self.catalog.store.count())
        if not self.records.add(job, unless=lambda j: j.dir == job.dir and j.state in PENDING):
            raise Conflict(f"an export into {folder} is queued or running already")
        self._worker.submit(self._run, job)
        return job

    def get(self, job_id: str) -> ExportJob:
        return self.records.get(job_id)

    def list(self) -> list[ExportJob]:
        return self.records.list()

    def cancel(self, job_id: str, timeout: float = 60.0) -> ExportJob:
        """Stop an export after the shard in hand; nothing is left in its folder. One still
        queued ends at once, whatever runs before it."""
        job = self.records.get(job_id)
        with self._starting:
            job.cancelled = True
            self._stop(job)
            if job.state == "queued":  # not started: _run will pass it by
                job.state, job.finished = "cancelled", time.time()
                self.records.end(job)
        job.ended.wait(timeout)
        return job

    def close(self) -> None:
        """Stop the running export (it shows as interrupted) and the queued ones."""
        self._closing = True
        for job in self.records.kept():
            self._stop(job)
        self._worker.shutdown(wait=True)

    @staticmethod
    def _stop(job: ExportJob) -> None:
        job.stop.set()
        child = job._child
        if child is not None and child.poll() is None:
            child.terminate()  # SIGTERM: it stops after the shard in hand and clears up

    def _save(self, job: ExportJob) -> None:
        self.records.save(job)

    def _run(self, job: ExportJob) -> None:
        with self._starting:
            if job.state == "cancelled":  # while it was queued (cancel ended it)
                return
            if not job.stop.is_set():
                job.state, job.started = "running", time.time()
        try:
            if job.state != "running":
                state, error = "stopped", None
            else:
                self._save(job)
                state, error = self._child_run(job)
            if state == "stopped":
                state = "cancelled" if job.cancelled or not self._closing else "interrupted"
            job.state, job.error = state, error
        except Exception as exc:  # the child could not start, say: the worker goes on
            if (full := disk_full(exc)) is not None:
                log.warning("export %s stopped: %s", job.id, full.message)
                job.state, job.error = "failed", full.message
            else:
                log.exception("export %s failed", job.id)
                job.state, job.error = "failed", f"unexpected error: {exc}"
        finally:
            job._child = None
            if job.state != "done":
                shutil.rmtree(Path(job.dir) / STAGING, ignore_errors=True)
            job.finished = time.time()
            self.records.end(job)
            log.info("export %s %s: %d rows in %d files", job.id, job.state, job.rows, job.files)

    def _child_run(self, job: ExportJob) -> tuple[str, str | None]:
        """Run the export's child to its end, following its progress: (state, error); a
        state of "stopped" where it stopped for `job.stop`."""
        catalog = self.catalog
        command = [*self.command, str(catalog.store.path), catalog.model_id, str(catalog.dim)]
        command += [job.dir, "--rows-per-shard", str(self.rows_per_shard)]
        command += ["--parent", str(os.getpid())]
        error: str | None = None
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
            job._child = child
            if job.stop.is_set():  # cancelled while it started
                child.terminate()
            assert child.stdout is not None
            for line in child.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("export %s: %s", job.id, line.rstrip())
                    continue
                if "error" in message:
                    error = str(message["error"])
                else:
                    job.rows, job.files = int(message["rows"]), int(message["files"])
                    self._save(job)
        code = child.returncode
        if code == 0:
            return "done", None
        if job.stop.is_set() and code in {EXIT_STOPPED, -signal.SIGTERM}:
            return "stopped", None
        return "failed", error or f"the export process ended with status {code}"


__all__ = ["ExportJob", "ExportManager"]
