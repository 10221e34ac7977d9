"""How long a compaction's id bookkeeping, or a store write's vector stacking, keeps every
other thread waiting (issue #11).

    python bench/gil_holds.py --n 10000000
    python bench/gil_holds.py --what vectors --repeat 9 --daemon   # one import batch's vectors
    python bench/gil_holds.py --what fine --rows 2000000 --repeat 5 --daemon --tmp /work/big

A ticker thread sleeps 1 ms in a loop; the longest gap between its ticks while the main thread
runs one step is how long that step kept other threads (a search's, the event loop) from
running: a step that holds the GIL shows its whole length. The steps are what a compaction of
an N-id base computes (10% removed, 5,000 recent ids folded in) and the set operations behind
them, each with numpy's own function and with imgsearch/index/idsets.py. `--what vectors`:
the steps are what the store does with one import batch's vectors (--rows rows of --dim,
a list of row views as the ingest core hands them): upsert.stacked, the one bytes join it made
before 3626623, np.array of the rows, the float16 conversion, and pyarrow's to_pylist of the
batch's paths, and the cut of the batch's float16 rows into one blob each (upsert._blobs, ~1 MB a
tolist; and in one tolist). Each step runs --repeat times (the longest pause over them all);
`--daemon` runs them under the interpreter settings the daemon runs with (cli.py: the switch
interval, the garbage collector's young-generation threshold, the heap so far frozen); without
it a collection now and then stretches a pause. `--what fine`: a start-up's faulting in of a
saved fine-code table (--rows rows of dim / 2 bytes, a file under --tmp, dropped from the
page cache before each run), FineTable.warm against the same pages read by a GIL-holding
tolist. Prints one JSON line
(bench/out/gil_holds.jsonl); the CPU model and load come with it.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import progress, record  # noqa: E402
from scale import machine  # noqa: E402

from imgsearch.cli import tune_interpreter  # noqa: E402
from imgsearch.index import idsets  # noqa: E402
from imgsearch.store import stacked, upsert  # noqa: E402


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


def id_steps(n: int) -> tuple[list[tuple[str, Callable[[], Any]]], Callable[[Any], bool]]:
    """A compaction's id bookkeeping on an n-id base, numpy's way and idsets' way; and the
    check that both ways agree."""
    rng = np.random.default_rng(0)
    base = np.arange(n, dtype=np.int64)
    dead = np.sort(rng.choice(n, n // 10, replace=False))
    recent = np.arange(n, n + 5000, dtype=np.int64)
    kept = np.setdiff1d(base, dead, assume_unique=True)
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

    def same(results: Any) -> bool:
        names = [name for name, _ in steps]
        return bool(
            np.array_equal(results[names[0]], results[names[1]])
            and np.array_equal(results[names[2]], results[names[3]])
        )

    return steps, same


def one_join(rows: list[np.ndarray]) -> np.ndarray:
    """upsert.stacked before 3626623: every row in one bytes join."""
    joined = bytearray().join([r.data for r in rows])
    return np.frombuffer(joined, np.float32).reshape(len(rows), len(rows[0]))


def one_cut(matrix: np.ndarray) -> list[bytes]:
    """upsert._blobs with one tolist of every row's bytes."""
    half = matrix.astype(upsert.VECTOR_DTYPE)
    return half.view(np.dtype((np.void, half.shape[1] * half.itemsize))).reshape(-1).tolist()


def vector_steps(
    rows: int, dim: int
) -> tuple[list[tuple[str, Callable[[], Any]]], Callable[[Any], bool]]:
    """What the store does with one import batch's vectors and paths; and the check that the
    stackings agree."""
    import pyarrow as pa

    matrix = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    views = list(matrix)  # a list of row views, as the ingest core hands them
    paths = pa.array([f"/archive/{n // 1000:05}/{n:09}.jpg" for n in range(rows)])
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("upsert.stacked (joins of upsert.JOIN_BYTES)", lambda: stacked(views)),
        ("one bytes join of every row (before 3626623)", lambda: one_join(views)),
        ("np.array of the rows (before upsert.stacked)", lambda: np.array(views, np.float32)),
        ("astype(float16) of the batch", lambda: matrix.astype(np.float16)),
        ("pyarrow to_pylist of the paths", lambda: paths.to_pylist()),
        ("the blobs of the batch (upsert._blobs)", lambda: upsert._blobs(matrix)),
        ("the blobs, one tolist (not chunked)", lambda: one_cut(matrix)),
    ]

    def same(results: Any) -> bool:
        names = [name for name, _ in steps]
        return all(np.array_equal(results[name], matrix) for name in names[:3])

    return steps, same


def fine_steps(
    rows: int, dim: int, folder: Path
) -> tuple[list[tuple[str, Callable[[], Any]]], Callable[[Any], bool]]:
    """A saved fine-code table faulted in from a cold page cache, by FineTable.warm and by a
    read that holds the GIL; and the check that warm() covered the whole file."""
    from imgsearch.index.fine import WARM_BYTES, FineTable

    path, row_bytes = folder / "fine-bench.u8", dim // 2
    if not path.exists() or path.stat().st_size != rows * row_bytes:
        rng = np.random.default_rng(0)
        with open(path, "wb") as fh:
            for start in range(0, rows, 65_536):
                fh.write(rng.integers(0, 256, (min(65_536, rows - start), row_bytes), np.uint8))
            fh.flush()
            os.fsync(fh.fileno())

    def cold(read: Callable[[FineTable], int]) -> Callable[[], int]:
        def step() -> int:
            fd = os.open(path, os.O_RDONLY)  # (no mapping of it is left: a fresh table a run)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            return read(FineTable(path, row_bytes))

        return step

    def held(table: FineTable) -> int:
        flat = table.rows.reshape(-1)
        for start in range(0, len(flat), WARM_BYTES):
            flat[start : start + WARM_BYTES : mmap.PAGESIZE].tolist()
        return len(flat)

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("FineTable.warm, cold (a reduction a step)", cold(lambda t: t.warm(threading.Event()))),
        ("the same pages by tolist (holds the GIL)", cold(held)),
    ]
    return steps, lambda results: results[steps[0][0]] == path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=("ids", "vectors", "fine"), default="ids")
    parser.add_argument("--n", type=int, default=10_000_000, help="ids in the base")
    parser.add_argument("--rows", type=int, default=20_000, help="vectors in the batch / table")
    parser.add_argument("--tmp", type=Path, default=None, help="--what fine: the file's folder")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each step")
    parser.add_argument("--daemon", action="store_true", help="the daemon's interpreter settings")
    args = parser.parse_args()
    folder: Path | None = None
    if args.what == "ids":
        steps, same = id_steps(args.n)
        out: dict[str, Any] = {"what": "ids", "n": args.n}
    elif args.what == "vectors":
        steps, same = vector_steps(args.rows, args.dim)
        out = {"what": "vectors", "rows": args.rows, "dim": args.dim}
    else:
        folder = Path(tempfile.mkdtemp(prefix="gil-holds-", dir=args.tmp))
        steps, same = fine_steps(args.rows, args.dim, folder)
        out = {"what": "fine", "rows": args.rows, "dim": args.dim}
    out.update({"numpy": np.__version__, "repeat": args.repeat, **machine(), "steps": {}})
    if args.daemon:
        tune_interpreter()
    out["switch_ms"], out["gc_young"] = sys.getswitchinterval() * 1000, gc.get_threshold()[0]
    ticker = Ticker()
    try:
        results = {}
        for name, fn in steps:
            progress(name)
            timings = []
            for _ in range(args.repeat):
                results[name], timing = ticker.timed(fn)
                timings.append(timing)
            pauses = sorted(t["longest_pause_ms"] for t in timings)
            out["steps"][name] = {
                "ms": min(t["ms"] for t in timings),
                "longest_pause_ms": pauses[-1],
                "median_pause_ms": pauses[len(pauses) // 2],
            }
    finally:
        ticker.close()
    out["same_results"] = same(results)
    if folder is not None:
        shutil.rmtree(folder)
    record(out, "gil_holds")


if __name__ == "__main__":
    main()
