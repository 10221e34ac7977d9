"""Handing memory that bulk work freed back to the system.

glibc keeps what a thread frees in that thread's arena (up to eight arenas a core), for the
process to reuse, and gives the system back only the free memory at the top of the main heap:
a daemon that had imported 10M images held 9.0 GB once its index settled, where the same
library takes 5.6 GB after a restart (bench/scale.py, docs/BENCHMARKS.md). `malloc_trim(0)`
returns every whole free page of every arena (madvise), which a later allocation faults in
again if it needs it. Meanwhile it holds each arena's lock: another thread's malloc() from an
arena being trimmed waits (1.5 GB: ~60 ms on an idle machine, 0.15-0.4 s beside a 10M import),
so the index's worker calls `trim` after its jobs (training, compaction, tuning) but not while a
bulk import runs; the import's end brings a job. (A fixed mmap threshold, so that big buffers
are never kept, cost a 1M import 22% more CPU: page faults.) Elsewhere than glibc: nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Log a trim that returned at least this much (smaller ones are routine).
LOG_FROM_MB = 64


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (musl, macOS, no C library found)."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """This process's resident memory in MB (0 where /proc cannot be read)."""
    return _proc_mb(status, "VmRSS:") or 0.0


def available_mb(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """Memory the system can give without swapping, in MB (MemAvailable); None where unknown."""
    return _proc_mb(meminfo, "MemAvailable:")


def _proc_mb(path: Path, field: str) -> float | None:
    """A `FIELD: N kB` line of a /proc file, in MB; None where it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def trim(why: str) -> float:
    """Return free heap memory to the system (the GIL is let go meanwhile: a ctypes call);
    the MB the resident size fell by."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return 0.0
    before, started = rss_mb(), time.monotonic()
    malloc_trim(0)
    freed = max(0.0, before - rss_mb())
    if freed >= LOG_FROM_MB:
        log.info(
            "%s: %.0f MB of freed memory returned to the system in %.2fs",
            why, freed, time.monotonic() - started,
        )  # fmt: skip
    return freed
