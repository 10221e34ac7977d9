"""What writing and deleting a big base file does to the reads searches make (issue #11).

    python bench/io_stall.py --db /path/to/imgsearch.sqlite3 --dir /work/big/B/io

One thread reads random 4 KiB pages of a SQLite file, its pages dropped from the page cache
first (as at 10M, where the 15 GB database does not fit beside the daemon: every re-scoring
read of a search goes to the disk), while the main thread writes a --size file (a base: 1.2 GB
at 10M) and deletes it, two ways each: at once (faiss.write_index, then fsync; unlink) and
paced (imgsearch/index/base.py: PACE_BYTES steps, each fdatasynced and dropped from the
cache; deletion truncating the file by the same steps, each committed with an fsync). Reports
the reads' latency during each event. Prints one JSON line (bench/out/io_stall.jsonl).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import percentiles, progress, record  # noqa: E402
from scale import machine  # noqa: E402

from imgsearch.index import base as B  # noqa: E402

STEP = B.PACE_BYTES


class Reads:
    """Random page reads of one file, back to back, each stamped (t, ms)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.pages = os.fstat(self.fd).st_size // 4096
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.times: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(1)
        while not self._stop.is_set():
            t = time.perf_counter()
            os.pread(self.fd, 4096, rng.randrange(self.pages) * 4096)
            self.times.append((t, (time.perf_counter() - t) * 1000))

    def __enter__(self) -> Reads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)

    def during(self, fn: Callable[[], None]) -> dict[str, Any]:
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        time.sleep(2)  # a baseline before, in the same window
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        time.sleep(3)  # writeback and discards that land after the call returns
        window = [ms for t, ms in self.times if t >= start]
        return {"seconds": took, "reads_ms": {**percentiles(window, (50, 99, 99.9))}}


def write_at_once(path: Path, data: np.ndarray, size: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(size // len(data)):
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_paced(path: Path, data: np.ndarray, size: int) -> None:
    with open(path, "wb") as fh:
        fd, done = fh.fileno(), 0
        for _ in range(size // len(data)):
            fh.write(data)
            fh.flush()
            os.fdatasync(fd)
            os.posix_fadvise(fd, done, len(data), os.POSIX_FADV_DONTNEED)
            done += len(data)


def delete_at_once(path: Path) -> None:
    os.unlink(path)
    fd = os.open(path.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def delete_paced(path: Path) -> None:
    B.unlink_paced(path)
    fd = os.open(path.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="a big file to read from")
    parser.add_argument("--dir", type=Path, required=True, help="where the big file is written")
    parser.add_argument("--size", type=int, default=1_200 << 20)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, STEP, dtype=np.uint8)
    target = args.dir / "base.bin"
    out: dict[str, Any] = {"bench": "io_stall", **machine(), "size": args.size, "step": STEP}
    with Reads(args.db) as reads:
        out["idle"] = reads.during(lambda: time.sleep(3))
        for name, fn in (
            ("write_at_once", lambda: write_at_once(target, data, args.size)),
            ("delete_at_once", lambda: delete_at_once(target)),
            ("write_paced", lambda: write_paced(target, data, args.size)),
            ("delete_paced", lambda: delete_paced(target)),
        ):
            out[name] = reads.during(fn)
            progress(f"{name}: {out[name]}")
    record(out, "io_stall")


if __name__ == "__main__":
    main()
