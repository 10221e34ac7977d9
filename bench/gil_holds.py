"""How long a compaction's id bookkeeping keeps every other thread waiting (issue #11).

    python bench/gil_holds.py --n 10000000

A ticker thread sleeps 1 ms in a loop; the longest gap between its ticks while the main thread
runs one step is how long that step kept other threads (a search's, the event loop) from
running: a step that holds the GIL shows its whole length. The steps are what a compaction of
an N-id base computes (10% removed, 5,000 recent ids folded in) and the set operations behind
them, each with numpy's own function and with imgsearch/index/idsets.py. Prints one JSON line
(bench/out/gil_holds.jsonl); the CPU model and load come with it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import progress, record  # noqa: E402
from scale import machine  # noqa: E402

from imgsearch.index import idsets  # noqa: E402


class Ticker:
    """A thread that wakes every millisecond and keeps the longest gap between its wakes."""

    def __init__(self) -> None:
        self.gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.gap, last = max(self.gap, now - last), now

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        self.gap = 0.0
        start = time.perf_counter()
        out = fn()
        took = time.perf_counter() - start
        return out, {"ms": round(took * 1000, 1), "longest_pause_ms": round(self.gap * 1000, 1)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="ids in the base")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = np.arange(args.n, dtype=np.int64)
    dead = np.sort(rng.choice(args.n, args.n // 10, replace=False))
    recent = np.arange(args.n, args.n + 5000, dtype=np.int64)
    kept = np.setdiff1d(base, dead, assume_unique=True)
    out: dict[str, Any] = {"n": args.n, "numpy": np.__version__, **machine(), "steps": {}}
    ticker = Ticker()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("dropped ids: np.union1d(dead, recent)", lambda: np.union1d(dead, recent)),
        ("dropped ids: idsets.union(dead, recent)", lambda: idsets.union(dead, recent)),
        ("new base ids: np.union1d(kept, recent)", lambda: np.union1d(kept, recent)),
        ("new base ids: idsets.union(kept, recent)", lambda: idsets.union(kept, recent)),
        ("np.setdiff1d(base, dead), assume_unique", lambda: np.setdiff1d(base, dead, True)),
        ("np.unique(base)", lambda: np.unique(base)),
        ("idsets.unique(base)", lambda: idsets.unique(base)),
        ("np.isin(base, dead)", lambda: np.isin(base, dead)),
        ("idsets.within(base, dead)", lambda: idsets.within(base, dead)),
    ]
    try:
        results = {}
        for name, fn in steps:
            progress(name)
            results[name], out["steps"][name] = ticker.timed(fn)
    finally:
        ticker.close()
    same = np.array_equal(results[steps[0][0]], results[steps[1][0]])
    same &= np.array_equal(results[steps[2][0]], results[steps[3][0]])
    out["same_results"] = bool(same)
    record(out, "gil_holds")


if __name__ == "__main__":
    main()
