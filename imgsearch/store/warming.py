"""The database file read into the operating system's page cache after a start, where it fits
(`--warm-database`: auto, on, off).

A search of a quantized index re-scores its best candidates with their exact vectors, read from
SQLite by id: rows anywhere in the file. After a restart the page cache holds little of it, and
a library's own searches fill it slowly (40 random rows a search, of millions), so their reads
go to the disk. A thread in the idle CPU and I/O classes (cpu.lowest_priority, cpu.idle_io:
the CPU goes to any other thread first; the disk's queue still holds its reads, so searches
wait behind them while it runs) reads the file from start to end, READ_BYTES at a time, once
the daemon answers and the index's fine codes are in, where the whole file fits in
the memory the system reports available (MemAvailable) with KEEP_FREE to spare: a database that
cannot stay cached is not read (the searches' reads would push out what was read first). The
page cache is the system's to reclaim: none of it is the daemon's resident memory.

`auto` (the default) reads only once the searches' own reads are seen to come slowly
(reads.SLOW_DISK_ROW_US a row). A 9M library's 15.5 GB (docs/BENCHMARKS.md, `bench/
search_profile.py --cold-start`): on this project's virtio disk (a cold row in 25-100 us) the
read took 22-39 s, searches meanwhile ran at 9-14 ms p50 against 7-10 without it, and after it
0.87-1.05x as long: not worth it, and auto never starts it there. With the disk limited to 200
reads a second, searches took 500 ms p50 without it, 7.7 ms once it had read the file (47 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cpu import idle_io, lowest_priority

log = logging.getLogger(__name__)

READ_BYTES = 2 << 20
KEEP_FREE = 2 << 30
AFTER_POLL = 0.2  # seconds between looks at the warm-up it waits for
SLOW_POLL = 1.0  # seconds between looks at the searches' reads (auto)
MEMINFO = Path("/proc/meminfo")


def mem_available(meminfo: Path = MEMINFO) -> int | None:
    """The memory the system can give without swapping (bytes), or None where it does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class DatabaseWarmer:
    """Reads one file into the page cache on a thread of its own (start), once, if it fits."""

    def __init__(
        self,
        path: Path,
        available: Callable[[], int | None] = mem_available,
        keep_free: int = KEEP_FREE,
        slow: Callable[[], bool] | None = None,
    ) -> None:
        """`slow`: read only once it says the disk is slow (asked every SLOW_POLL seconds;
        `--warm-database auto`), else at once."""
        self.path = path
        self._slow = slow
        self._available = available
        self._keep_free = keep_free
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "waiting"  # then watching (slow), reading, and done, skipped, stopped, failed
        self.size = 0
        self.read = 0

    def start(self, after: threading.Thread | None = None) -> threading.Thread:
        """Read the file on a new thread in the idle CPU and I/O classes, once `after` (another
        warm-up's thread) has ended."""
        self._thread = threading.Thread(
            target=self._background, args=(after,), name="database-warm", daemon=True
        )
        self._thread.start()
        return self._thread

    def _background(self, after: threading.Thread | None) -> None:
        lowest_priority()
        idle_io()
        while after is not None and after.is_alive():  # (a close meanwhile need not wait)
            if self._stop.wait(AFTER_POLL):
                break
        if self._slow is not None:
            with contextlib.suppress(OSError):  # (what /stats shows meanwhile; _read says)
                self.size = self.path.stat().st_size
            self.state = "watching"
            while not self._stop.is_set() and not self._slow():
                self._stop.wait(SLOW_POLL)
        self.run()

    def run(self) -> None:
        """Read the file through if it fits, on the calling thread as it is."""
        try:
            self._read()
        except OSError as exc:  # (the data dir vanished, a read error: only a lost speed-up)
            self.state = "failed"
            log.warning("database not read into the page cache: %s", exc)

    def _read(self) -> None:
        started = time.monotonic()
        with open(self.path, "rb", buffering=0) as fh:
            self.size = size = os.fstat(fh.fileno()).st_size
            available = self._available()
            if available is None or size > available - self._keep_free:
                self.state = "skipped"
                log.info(
                    "database (%.0f MB) not read into the page cache: %s", size / 1e6,
                    "the memory available is unknown" if available is None
                    else f"{available / 1e6:.0f} MB available, {self._keep_free / 1e6:.0f} "
                    "of it kept free",
                )  # fmt: skip
                return
            self.state = "reading"
            buffer = bytearray(READ_BYTES)
            while self.read < size and not self._stop.is_set():
                got = os.preadv(fh.fileno(), [buffer], self.read)
                if not got:  # (the file shrank meanwhile)
                    break
                self.read += got
        seconds = time.monotonic() - started
        self.state = "stopped" if self._stop.is_set() else "done"
        log.info(
            "database read into the page cache: %.0f of %.0f MB in %.1fs%s",
            self.read / 1e6, size / 1e6, seconds,
            " (stopped)" if self.state == "stopped" else "",
        )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """What /stats shows of it."""
        return {
            "state": self.state,
            "size_mb": round(self.size / 1e6, 1),
            "read_mb": round(self.read / 1e6, 1),
        }

    def close(self) -> None:
        """Stop reading (between two reads) and wait briefly for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
