"""What reserving the fine codes' disk blocks costs an import: FineTable.put with and without it.

    python bench/fine_reserve.py --dir /work/big/tmp --rows 10000000
    python bench/fine_reserve.py --dir /work/big/tmp --rows 2000000 --rounds 3

The fine codes' file grows sparse and is written through a memory mapping; since 2026-12-07 its
blocks are reserved (posix_fallocate, imgsearch.index.fine.RESERVE_BYTES at a time) before the
mapping writes them, so that a full disk is an error, not a SIGBUS. Each round writes --rows
rows of --row-bytes (512-d: 256) into a new file in --dir, in batches of --batch as an import
does, once as the daemon does and once with the reservation skipped, in turns; then flushes
(msync + fsync), deletes the file and waits for the disk (sync). Prints the wall seconds and
µs a row of each, the disk the file took, the reservation's calls and their seconds, the CPU
model and load; appends one JSON line to bench/out/fine_reserve.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, record  # noqa: E402

from imgsearch.index import fine  # noqa: E402
from imgsearch.index.fine import FineTable  # noqa: E402


class Timed:
    """os.posix_fallocate as fine.py calls it, each call's seconds kept."""

    def __init__(self) -> None:
        self.real = os.posix_fallocate
        self.seconds: list[float] = []

    def __call__(self, fd: int, offset: int, length: int) -> None:
        start = time.perf_counter()
        self.real(fd, offset, length)
        self.seconds.append(time.perf_counter() - start)


def one(folder: Path, rows: int, row_bytes: int, batch: int, reserve: bool) -> dict[str, Any]:
    path = folder / f"fine-bench-{os.getpid()}.u8"
    path.unlink(missing_ok=True)
    table = FineTable(path, row_bytes)
    if not reserve:
        table._reserve = lambda end: None  # type: ignore[method-assign]
    timed = Timed()
    fine.os.posix_fallocate = timed  # type: ignore[attr-defined]
    codes = np.random.default_rng(0).integers(0, 256, (batch, row_bytes), dtype=np.uint8)
    start = time.perf_counter()
    for at in range(0, rows, batch):
        ids = np.arange(at, min(rows, at + batch))
        table.put(ids, codes[: len(ids)])
    written = time.perf_counter() - start
    table.flush()
    total = time.perf_counter() - start
    disk = os.stat(path).st_blocks * 512
    fine.os.posix_fallocate = timed.real  # type: ignore[attr-defined]
    del table
    path.unlink()
    os.sync()  # the freed blocks and any writeback done before the next run starts
    return {
        "reserve": reserve,
        "put_s": round(written, 3),
        "with_flush_s": round(total, 3),
        "us_a_row": round(written / rows * 1e6, 4),
        "disk_mb": round(disk / 1e6, 1),
        "fallocate_calls": len(timed.seconds),
        "fallocate_s": round(sum(timed.seconds), 4),
        "fallocate_max_ms": round(max(timed.seconds, default=0) * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--row-bytes", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for reserve in order:
            runs.append(one(args.dir, args.rows, args.row_bytes, args.batch, reserve))
            print(runs[-1], flush=True)
    result = {
        "cpu": cpu_model(),
        "load": os.getloadavg(),
        "rows": args.rows,
        "row_bytes": args.row_bytes,
        "batch": args.batch,
        "runs": runs,
    }
    record(result, "fine_reserve")


if __name__ == "__main__":
    main()
