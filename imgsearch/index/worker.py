"""The index's background thread: it looks for maintenance (training, compaction, tuning)
every WAKE_SECONDS or when woken, at the background priority, and survives any failure.

A failed job is tried again later, twice as late each time in a row (WAKE_SECONDS up to
RETRY_MAX_SECONDS): a compaction on a full disk writes its base until the disk refuses, and
tried every few seconds it would spend the CPU and the log on that alone. Meanwhile searches
and adds go on against the segments in memory (SQLite has every row), and `/stats` says what
failed (`index.error`) until a job succeeds. A new bulk import asks for a try at once
(`retry_now`: the space may have been freed), and one that would have to wait for a base that
the full disk cannot take stops instead (`full`, LibraryIndex.make_room).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..cpu import lower_priority
from ..errors import DiskFull, disk_full
from .stopping import Stopped

log = logging.getLogger(__name__)

WAKE_SECONDS = 5.0  # how often the worker looks for work unprompted
RETRY_MAX_SECONDS = 300.0  # the longest wait before a failed job is tried again


class Worker:
    """A thread that calls `job` (which returns what it ran, or None) until `stop` is set,
    then `after(what)` for each job that ran."""

    def __init__(
        self,
        job: Callable[[], str | None],
        after: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        self.job, self.after, self.stop = job, after, stop
        self.failures = 0  # failed jobs in a row
        self.error: str | None = None  # what the last of them said
        # The last job failed for a full disk, and no try was asked for since (retry_now).
        self.full: DiskFull | None = None
        self._wake = threading.Event()
        self._retry = threading.Event()  # ends a wait after a failure early
        self._thread = threading.Thread(target=self._run, name="index-worker", daemon=True)
        self._thread.start()

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def wake(self) -> None:
        self._wake.set()

    def retry_now(self) -> None:
        """After a failure, try again now rather than at the end of the wait."""
        self.full = None
        self._retry.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread once `stop` is set."""
        self._retry.set()
        self._wake.set()
        self._thread.join(timeout)

    def retry_in(self) -> float:
        """Seconds before the next try after `failures` failed jobs in a row."""
        return min(RETRY_MAX_SECONDS, WAKE_SECONDS * 2.0 ** max(0, self.failures - 1))

    def _run(self) -> None:
        lower_priority()  # (training and compaction use every core through FAISS's team)
        while not self.stop.is_set():
            self._wake.wait(WAKE_SECONDS)
            self._wake.clear()
            try:
                ran = self.job()
                self.failures, self.error, self.full = 0, None, None
                if ran:
                    self.after(ran)
            except Stopped:
                return
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        wait = self.retry_in()
        self._retry.clear()
        self.full = disk_full(exc)
        if self.full is not None:  # not a bug: one line, no traceback
            self.error = self.full.message
            log.warning("index maintenance stopped: %s (next try in %.0f s)", self.error, wait)
        else:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("index maintenance failed; next try in %.0f s", wait)
        self._retry.wait(wait)
