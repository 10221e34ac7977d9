"""Indexing jobs: every add is a job, run one at a time, watched and cancelled by id.

A job adds a file or folder (`image` is its path), the files of a CSV, or a list of URLs (`image`
is the URL, or "N URLs"); `kind` says which.

A job's record is kept in SQLite, so after a crash or a restart a job that was queued or
running shows as `interrupted`; running the same add again skips what was already done.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .downloads import UrlAdder
from .errors import Busy, ImgSearchError, NotFound, disk_full
from .fetch import check_url
from .ingest import AddReport, FileError, Ingester
from .ingest.report import ERRORS_KEPT
from .store import JobRow, Store

log = logging.getLogger(__name__)

FINISHED = frozenset({"done", "failed", "cancelled", "interrupted"})
HISTORY = 200  # jobs kept listed (the newest)
PERSIST_EVERY = 5.0  # seconds between progress writes of a running job
ERRORS_SHOWN = 100


class Ended(threading.Event):
    """A job's end: a threading.Event that also runs callbacks once set, so a waiter on an
    event loop wakes at once instead of polling (web/offload.py: `until_set`)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the setting thread) when set; at once if already set."""
        with self._guard:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._guard:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class Job:
    """One add of a file or folder (or of URLs), and how far it got."""

    id: str
    kind: str  # path, urls, files (a CSV of paths); bulk imports are bulk/imports.py's jobs
    image: str
    update: bool
    state: str = "queued"
    done: int = 0
    total: int | None = None
    report: AddReport = field(default_factory=AddReport)
    error: str | None = None
    error_status: int = 500
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    cancelled: bool = field(default=False, repr=False)  # by a user: so even at a shutdown
    ended: Ended = field(default_factory=Ended, repr=False)
    urls: tuple[str, ...] = ()  # a URL job's URLs (not kept once the job has ended)
    strict: bool = False  # a URL job for one `url`: its failure fails the job, as for one file
    files: tuple[str, ...] = ()  # a `files` job's files (a CSV of paths; not kept once ended)
    landed: dict[str, str] = field(default_factory=dict, repr=False)  # URL -> its stored file
    # Run on the job's thread once it has ended, whatever its state (e.g. writing metadata).
    after: Callable[[Job], None] | None = field(default=None, repr=False)

    @property
    def images_per_s(self) -> float | None:
        if self.started is None or not self.done:
            return None
        elapsed = (self.finished or time.time()) - self.started
        return self.done / elapsed if elapsed > 0 else None

    def as_json(self) -> dict[str, Any]:
        rate = self.images_per_s
        eta = None
        if rate and self.total is not None and self.state == "running":
            eta = round((self.total - self.done) / rate, 1)
        report = self.report.as_json(errors=ERRORS_SHOWN)
        return {
            "id": self.id,
            "image": self.image,
            "kind": self.kind,
            "update": self.update,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            **{k: report[k] for k in ("added", "updated", "skipped", "failed")},
            "errors": report["errors"],
            "images_per_s": round(rate, 2) if rate else None,
            "eta_s": eta,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }

    def row(self) -> JobRow:
        return JobRow(
            self.id,
            self.kind,
            self.image,
            self.update,
            self.state,
            self.done,
            self.total,
            json.dumps(self.report.as_json()),
            self.error,
            self.created,
            self.started,
            self.finished,
        )

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        data = json.loads(row.report)
        report = AddReport(data["added"], data["updated"], data["skipped"], data["failed"])
        report.errors = [  # (records before 2026-12-08 kept every error)
            FileError(e["image"], e["error"], e.get("status", 422))
            for e in data["errors"][:ERRORS_KEPT]
        ]
        job = cls(
            row.id,
            row.kind,
            row.image,
            bool(row.update),
            row.state,
            row.done,
            row.total,
            report,
            row.error,
            created=row.created,
            started=row.started,
            finished=row.finished,
        )
        job.ended.set()
        return job


class JobManager:
    """Queues adds and runs them one after another on a worker thread."""

    def __init__(
        self, ingester: Ingester, store: Store, max_pending: int, urls: UrlAdder | None = None
    ) -> None:
        self.ingester = ingester
        self.urls = urls
        self.store = store
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._closing = False
        interrupted = store.jobs.interrupt()
        if interrupted:
            log.warning("%d indexing job(s) were interrupted by the last shutdown", interrupted)
        store.jobs.trim(HISTORY)  # those shown: the rest would only fill the database
        self._jobs = {row.id: Job.from_row(row) for row in store.jobs.recent(HISTORY)}
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="jobs")

    def submit(self, target: Path, update: bool, after: Callable[[Job], None] | None = None) -> Job:
        """Queue an add; 503 when too many are queued or running already."""
        if not target.exists():
            raise NotFound(f"no such file or directory: {target}")
        return self._queue(Job(uuid.uuid4().hex[:12], "path", str(target), update, after=after))

    def submit_files(
        self,
        files: Sequence[Path],
        update: bool,
        after: Callable[[Job], None] | None = None,
        errors: Sequence[FileError] = (),
    ) -> Job:
        """Queue an add of listed files (absolute); each one missing is a failed file, and so
        is each of `errors` (rows refused before the job)."""
        names = tuple(dict.fromkeys(str(f) for f in files))
        count = len(names) + len(errors)
        label = f"{count} listed file{'' if count == 1 else 's'}"
        job = Job(uuid.uuid4().hex[:12], "files", label, update, files=names, after=after)
        for error in errors:
            job.report.fail(error)
        return self._queue(job)

    def submit_urls(
        self,
        urls: Sequence[str],
        update: bool,
        *,
        strict: bool = False,
        after: Callable[[Job], None] | None = None,
    ) -> Job:
        """Queue an add of URLs; `strict` (one URL) checks it now and fails the job if it fails."""
        if self.urls is None:
            raise ImgSearchError("this daemon cannot download URLs", 501)
        if strict:
            urls = [check_url(url) for url in urls]
        # The same URL twice is one download, as check_url gives it (stripped); one it refuses
        # stays as it is, to fail in the run with its reason.
        urls = list(dict.fromkeys(_url_key(url) for url in urls))
        label = urls[0] if len(urls) == 1 else f"{len(urls)} URLs"
        job = Job(
            uuid.uuid4().hex[:12],
            "urls",
            label,
            update,
            urls=tuple(urls),
            strict=strict,
            after=after,
        )
        return self._queue(job)

    def _queue(self, job: Job) -> Job:
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.state not in FINISHED)
            if pending >= self.max_pending:
                raise Busy(f"{pending} indexing jobs are queued or running; retry later", 10)
            self._jobs[job.id] = job
            while len(self._jobs) > HISTORY:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state not in FINISHED:
                    break
                del self._jobs[oldest]
        try:
            self.store.jobs.save(job.row())
        except BaseException:
            # Never handed to the worker: left listed, it would stay queued and count against
            # max_pending for good (eight such jobs refused every later add with 503).
            with self._lock:
                self._jobs.pop(job.id, None)
            raise
        self._worker.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no such job: {job_id}") from None

    def list(self) -> list[Job]:
        """Newest first."""
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: str, timeout: float = 60.0) -> Job:
        """Stop a job after the batch in flight (what was embedded stays); wait for it. One
        still queued ends at once, whatever runs before it."""
        job = self.get(job_id)
        with self._lock:  # (against _run starting it)
            job.cancelled = True
            job.stop.set()
            if job.state == "queued":  # not started: _run will pass it by
                job.state = "cancelled"
                self._end(job)
        job.ended.wait(timeout)
        return job

    def forget(self, job_id: str, timeout: float = 60.0) -> Job:
        """Cancel a job (as `cancel`), then drop it from the list and the store."""
        job = self.cancel(job_id, timeout)
        with self._lock:
            self._jobs.pop(job_id, None)
        self.store.jobs.delete(job_id)
        return job

    def interrupt(self) -> None:
        """Stop every job after its batch in flight; they end as `interrupted` (or
        `cancelled`, where a user cancelled them first)."""
        self._closing = True
        for job in list(self._jobs.values()):
            job.stop.set()

    def close(self) -> None:
        """Interrupt every job and wait for the worker to finish."""
        self.interrupt()
        self._worker.shutdown(wait=True)

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.ended.is_set():  # cancelled while it was queued
                return
            if not job.stop.is_set():
                job.state, job.started = "running", time.time()
        try:
            if job.stop.is_set():
                job.state = self._stopped(job)
                return
            self.store.jobs.save(job.row())
            if job.kind == "path":
                self.ingester.add(
                    Path(job.image),
                    update=job.update,
                    stop=job.stop,
                    report=job.report,
                    on_progress=self._progress_hook(job),
                )
            elif job.kind == "files":
                self.ingester.add_files(
                    [Path(f) for f in job.files],
                    label=job.image,
                    update=job.update,
                    stop=job.stop,
                    report=job.report,
                    on_progress=self._progress_hook(job),
                )
            elif job.kind == "urls" and self.urls is not None:
                self.urls.add(
                    job.urls,
                    update=job.update,
                    strict=job.strict,
                    stop=job.stop,
                    report=job.report,
                    on_progress=self._progress_hook(job),
                    landed=job.landed,
                )
            else:
                raise ImgSearchError(f"this daemon cannot run {job.kind} jobs", 501)
            job.state = self._stopped(job) if job.stop.is_set() else "done"
        except ImgSearchError as exc:
            job.state, job.error, job.error_status = "failed", exc.message, exc.status
        except Exception as exc:  # the worker must survive any job
            if (full := disk_full(exc)) is not None:
                log.warning("indexing job %s stopped: %s", job.id, full.message)
                job.state, job.error, job.error_status = "failed", full.message, full.status
            else:
                log.exception("indexing job %s failed", job.id)
                job.state, job.error = "failed", f"unexpected error: {exc}"
        finally:
            self._end(job)

    def _stopped(self, job: Job) -> str:
        """The state of a job stopped before its end: a user's cancel stands at a shutdown."""
        return "interrupted" if self._closing and not job.cancelled else "cancelled"

    def _end(self, job: Job) -> None:
        """A job's last record saved (or deleted, if forgotten meanwhile), then its end set;
        a record that cannot be saved (a full disk) is left "queued" or "running": at the next
        start it shows as interrupted."""
        job.finished = time.time()
        self._after(job)
        job.urls, job.files, job.landed = (), (), {}
        try:
            self.store.jobs.save(job.row())
            if job.id not in self._jobs:  # forgotten before it ended: so is its record
                self.store.jobs.delete(job.id)
        except Exception as exc:  # (a cancel must still answer, the worker go on)
            log.warning("job %s: its record not saved: %s", job.id, exc)
        finally:
            job.ended.set()
        log.info("job %s %s: %s", job.id, job.state, job.image)

    def _after(self, job: Job) -> None:
        if job.after is None:
            return
        try:
            job.after(job)
        except Exception:  # the job's own result stands
            log.exception("after job %s", job.id)

    def _progress_hook(self, job: Job) -> Any:
        last_save = time.monotonic()

        def on_progress(done: int, total: int) -> None:
            nonlocal last_save
            job.done, job.total = done, total
            if time.monotonic() - last_save > PERSIST_EVERY:
                last_save = time.monotonic()
                self.store.jobs.save(job.row())

        return on_progress


def _url_key(url: str) -> str:
    try:
        return check_url(url)
    except ImgSearchError:
        return url
