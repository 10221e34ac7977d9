"""Where a daemon's threads are when the GIL (or a CPU) kept a waiting thread waiting.

Loaded by the interpreter at start-up when this folder is on PYTHONPATH and GIL_WATCH_LOG names
a file (bench/import_rate.py --gil-watch sets both for the daemon it starts; other processes,
the benchmark's own, are left alone). A thread at the default priority sleeps a millisecond at
a time, as the event loop waits for a request; when it wakes more than GIL_WATCH_MS (default
6) late, it writes where every other thread is (their three innermost Python frames) under a
"GAP" line; every 97th wake it writes the same under a "BASE" line, the threads' usual
whereabouts. A place met at the gaps much more often than at the baseline is where a thread
held the GIL (or the CPUs) while the others waited; bench/import_rate.py summarizes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

BASE_EVERY = 97


def _where(me: int, names: dict[int, str]) -> str:
    lines = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        stack = traceback.extract_stack(frame)[-3:]
        inner = " < ".join(
            f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in reversed(stack)
        )
        lines.append(f"  [{names.get(ident, ident)}] {inner}")
    return "\n".join(lines)


def _watch(path: str, late_s: float) -> None:
    names: dict[int, str] = {}
    me = threading.get_ident()
    with open(path, "a", buffering=1) as out:
        last, ticks = time.perf_counter(), 0
        while True:
            time.sleep(0.001)
            now = time.perf_counter()
            gap, ticks = now - last, ticks + 1
            if gap > late_s or ticks % BASE_EVERY == 0:
                names.update((t.ident or 0, t.name) for t in threading.enumerate())
                kind = "GAP" if gap > late_s else "BASE"
                out.write(f"{kind} {gap * 1000:.1f} {time.time():.3f}\n{_where(me, names)}\n")
                now = time.perf_counter()
            last = now


def _start() -> None:
    path = os.environ.get("GIL_WATCH_LOG")
    try:
        command = open("/proc/self/cmdline", "rb").read()
    except OSError:
        return
    if not path or b"serve" not in command:
        return
    late_s = float(os.environ.get("GIL_WATCH_MS", "6")) / 1000
    threading.Thread(target=_watch, args=(path, late_s), name="gil-watch", daemon=True).start()


_start()
