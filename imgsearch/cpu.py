"""What this machine's CPU runs natively (read from /proc/cpuinfo; never assumed), how many
OpenMP threads the calling thread's torch ops use, and the lower CPU (and disk) priority of the
daemon's background threads."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# CPU flags of native bfloat16 arithmetic: AVX512-BF16 or AMX.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The nice value (0-19, higher yields more) of the threads that work through a backlog: the
# index's training and compaction, a bulk import's reading, encoding and writing. At 10 a
# request's thread gets ~10x the CPU share of each of them, so on a 2-core machine the event
# loop and searches queue less behind them for a time slice (a 2M-row import: /health p99
# 17.3-17.4 -> 11.5-14.9 ms, p90 5.4-5.7 -> 2.6-2.8, the import as fast; docs/BENCHMARKS.md
# "Requests before bulk work"). What is left of the wait is mostly for the GIL.
BACKGROUND_NICE = 10
LOWEST_NICE = 19  # where the idle scheduling class is missing (lowest_priority)
# ioprio_set(2) and ioprio_get(2), which Python's os module does not wrap: their numbers by
# machine, and the idle I/O class as they take it (for the calling thread: "who" a process id).
IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}
IOPRIO_WHO_PROCESS = 1
IOPRIO_IDLE = 3 << 13


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty when /proc/cpuinfo cannot be read, as on macOS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return frozenset(value.split())
    return frozenset()


def native_amx() -> bool:
    """Whether the CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def native_bf16() -> bool:
    """Whether the CPU runs bfloat16 natively."""
    return bool(cpu_flags() & BF16_FLAGS)


def lower_priority(nice: int = BACKGROUND_NICE) -> None:
    """Make the calling thread, and the threads it starts later (its OpenMP teams), yield the
    CPU to requests: on Linux the nice value is per thread. Never raised (a daemon started
    niced keeps its own); elsewhere, or where not allowed, nothing is done."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed
        log.debug("%s keeps its priority: %s", threading.current_thread().name, exc)


def lowest_priority() -> str:
    """Put the calling thread (Linux threads have their own policy, and threads it starts
    inherit it) in the idle scheduling class, where it runs only on CPU nothing else wants,
    else nice it as far as it goes; say which it got ("idle", "nice 19" or "normal")."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError) as exc:
        log.debug("no idle scheduling class for %s: %s", threading.current_thread().name, exc)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, LOWEST_NICE)
        return f"nice {LOWEST_NICE}"
    except (AttributeError, OSError):
        return "normal"


def normal_class(tid: int) -> None:
    """Take thread `tid` (a native id) out of the idle scheduling class again, so that what it
    still has to do before it stops is not starved by a busy machine; where not allowed (or
    not Linux), nothing is done."""
    try:
        if os.sched_getscheduler(tid) == os.SCHED_IDLE:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        log.debug("thread %s stays in the idle class: %s", tid, exc)


def idle_io() -> bool:
    """Put the calling thread's disk reads and writes in the idle I/O class: served when no
    other I/O waits, where the kernel's I/O scheduler has classes (mq-deadline, BFQ); whether
    it could. Linux only (x86_64, aarch64)."""
    done = _ioprio(0, IOPRIO_IDLE)
    if done is None or done != 0:
        log.debug("no idle I/O class for %s", threading.current_thread().name)
        return False
    return True


def io_priority() -> int | None:
    """The calling thread's I/O priority as ioprio_get(2) gives it (None where unknown)."""
    value = _ioprio(1)
    return None if value is None or value < 0 else value


def _ioprio(call: int, *args: int) -> int | None:
    """ioprio_set (`call` 0) or ioprio_get (1) for the calling thread; None off Linux."""
    calls = IOPRIO_SYSCALLS.get(platform.machine())
    if calls is None or os.uname().sysname != "Linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(calls[call], IOPRIO_WHO_PROCESS, threading.get_native_id(), *args))


def background_share(share: int) -> None:
    """The calling thread at the background priority (lower_priority), its OpenMP teams
    (FAISS's and torch's runtimes; the setting is per OS thread) a `share`-th of the cores:
    for one of `share` threads that work side by side (an import's encoders)."""
    lower_priority()
    threads = max(1, (os.cpu_count() or 1) // max(1, share))
    for lib in _openmp_libraries():
        lib.set_num_threads(threads)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch ops in the calling thread use `threads` OpenMP threads (a comparator's product:
    fewer; the index's k-means: every core, where the daemon's default is half), MKL's
    products inside torch too; other threads, and threads started meanwhile, keep theirs
    (torch.set_num_threads would change the default of every thread that has not run torch
    yet)."""
    import torch

    torch.get_num_threads()  # torch sets this thread's team size on first use: before us
    libs = _openmp_libraries()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(threads)
    mkl = torch_mkl()
    mkl_before = mkl.MKL_Set_Num_Threads_Local(threads) if mkl is not None else 0
    try:
        yield
    finally:
        for lib, n in zip(libs, before, strict=True):
            lib.set_num_threads(n)
        if mkl is not None:
            mkl.MKL_Set_Num_Threads_Local(mkl_before)  # (0: MKL's default again)


@functools.cache
def torch_mkl() -> Any:
    """MKL's service calls inside torch's CPU library, or None (a torch without MKL). torch
    sets a thread's MKL thread count when it first runs an op there (to its default: half
    the cores in the daemon) and OpenMP's team does not change it, so without
    MKL_Set_Num_Threads_Local a torch_threads(2) product ran on one thread (the daemon's
    first k-means at 10M: 29.5-30.5 s against 17.5-17.9 with it, bench/import_rate.py;
    docs/BENCHMARKS.md)."""
    import ctypes

    import torch

    for path in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            lib = ctypes.CDLL(str(path))
            setter, getter = lib.MKL_Set_Num_Threads_Local, lib.MKL_Get_Max_Threads
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int  # C API: by value
        getter.argtypes, getter.restype = [], ctypes.c_int
        return lib
    return None


@contextmanager
def faiss_team() -> Iterator[None]:
    """Torch ops in the calling thread run on the OpenMP team FAISS has in it, and FAISS keeps
    it after: where torch was loaded first the two share one runtime, and torch's first op in
    a thread sets the thread's team to torch's default (the daemon's: half the cores)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    try:
        with torch_threads(threads):
            yield
    finally:
        faiss.omp_set_num_threads(threads)


@functools.cache
def _openmp_libraries() -> tuple[Any, ...]:
    """threadpoolctl's handles of the OpenMP runtimes loaded (torch's among them)."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime before the scan)
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="openmp").lib_controllers)
