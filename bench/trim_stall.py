"""What handing freed memory back costs the daemon's other threads (imgsearch.memory.trim).

    python bench/trim_stall.py                     # 1.5 GB freed, each kind of allocation
    python bench/trim_stall.py --gb 3 --rounds 3

One thread mallocs --gb in 64 KB blocks (under glibc's mmap threshold: they come from that
thread's arena, as an import's batches and FAISS's list blocks do) and frees all but the last
(the heap's top stays in use, so free() cannot shrink it). Then `memory.trim` runs while
another thread allocates in a loop, one kind per round: 20 objects of 2,000 bytes (malloc
from an arena), a 2.4 MB numpy array (mmap), or a pure-Python sum (pymalloc, no malloc): the
trim's seconds and the other thread's slowest iteration during it against before it. Appends
one JSON line to bench/out/trim_stall.jsonl.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402

from imgsearch import memory  # noqa: E402

BLOCK = 64 * 1024
KINDS: dict[str, Callable[[], Any]] = {
    "malloc_2000B": lambda: [bytes(2000) for _ in range(20)],
    "numpy_2.4MB": lambda: np.ones(300_000),
    "python_only": lambda: sum(i for i in range(2000)),
}


def freed_in_an_arena(libc: Any, gb: float) -> int:
    """Leave `gb` free inside a finished thread's arena; return the block that pins it."""
    kept: list[int] = []

    def allocate() -> None:
        blocks = [libc.malloc(BLOCK) for _ in range(int(gb * 2**30 / BLOCK))]
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)
        for block in blocks[:-1]:
            libc.free(block)
        kept.append(blocks[-1])

    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
    return kept[0]


def one(libc: Any, gb: float, kind: str) -> dict[str, float]:
    pin = freed_in_an_arena(libc, gb)
    stop, worst = threading.Event(), [0.0]

    def loop() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            KINDS[kind]()
            worst[0] = max(worst[0], (time.perf_counter() - start) * 1000)
            time.sleep(0.001)

    other = threading.Thread(target=loop)
    other.start()
    time.sleep(0.3)
    before, worst[0] = worst[0], 0.0
    start = time.perf_counter()
    freed = memory.trim("bench")
    trim_ms = (time.perf_counter() - start) * 1000
    time.sleep(0.2)
    stop.set()
    other.join()
    libc.free(pin)
    return {"freed_mb": freed, "trim_ms": trim_ms, "worst_before_ms": before, "worst_ms": worst[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    result: dict[str, Any] = {
        "bench": "trim_stall", "cpu": cpu_model(), "load": os.getloadavg(), "gb": args.gb,
        "runs": [],
    }  # fmt: skip
    for _ in range(args.rounds):
        for kind in KINDS:
            row = {"kind": kind, **one(libc, args.gb, kind)}
            progress(str({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
            result["runs"].append(row)
    record(result, "trim_stall")


if __name__ == "__main__":
    main()
