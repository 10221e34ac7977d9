"""What writing the fine codes costs: FineTable.put (pwrite) against writes through the mapping.

    python bench/fine_write.py --dir /work/big/tmp --rows 10000000
    python bench/fine_write.py --dir /work/big/tmp --rows 2000000 --rounds 3 --scattered 250000

Since 2026-12-07 (second change) the fine codes are written with pwrite, each run of
consecutive ids one call, and read back through the mapping at once (so they stay mapped); until
then they were written through the shared mapping, their blocks reserved first (posix_fallocate,
8 MB ahead), which still died of a SIGBUS on btrfs (tests/test_disk_full.py). Each round writes
--rows rows of --row-bytes (512-d: 256) into a new file in --dir, in batches of --batch as an
import does, then rewrites --scattered rows at random ids in batches of --batch (as a start-up
replays rows the file has, with gaps where rows were removed), once with this tree's put and
once the way before (`Mapped`, below), in turns; then flushes (fsync), deletes the file and
waits for the disk (sync). Prints the wall seconds and µs a row of each, the disk the file
took, the bytes of it mapped in the process (Rss), the CPU model and load; appends one JSON
line to bench/out/fine_write.jsonl. (Before: bench/fine_reserve.py, the reservation alone.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, record  # noqa: E402

from imgsearch.index.fine import FineTable  # noqa: E402

RESERVE_BYTES = 8 << 20  # the reservation's step before


class Mapped(FineTable):
    """The table as it was written before: through a writable shared mapping, the blocks
    reserved (posix_fallocate) RESERVE_BYTES ahead of the last row."""

    def __init__(self, path: Path, row_bytes: int) -> None:
        self.reserved = 0
        super().__init__(path, row_bytes)

    def _map(self) -> Any:
        count = self.path.stat().st_size // self.row_bytes
        return np.memmap(self.path, np.uint8, "r+", shape=(count, self.row_bytes))

    def _write(self, ids: np.ndarray, codes: np.ndarray) -> None:
        end = (int(ids.max()) + 1) * self.row_bytes
        if end > self.reserved:
            upto = min(len(self.rows) * self.row_bytes, max(end, self.reserved + RESERVE_BYTES))
            fd = os.open(self.path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, self.reserved, upto - self.reserved)
            finally:
                os.close(fd)
            self.reserved = upto
        self.rows[ids] = codes


def mapped_bytes(path: Path) -> int:
    """Rss of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def one(folder: Path, args: argparse.Namespace, kind: str) -> dict[str, Any]:
    path = folder / f"fine-bench-{os.getpid()}.u8"
    path.unlink(missing_ok=True)
    table = (FineTable if kind == "pwrite" else Mapped)(path, args.row_bytes)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.batch, args.row_bytes), dtype=np.uint8)
    start = time.perf_counter()
    for at in range(0, args.rows, args.batch):
        ids = np.arange(at, min(args.rows, at + args.batch))
        table.put(ids, codes[: len(ids)])
    written = time.perf_counter() - start
    scattered = np.sort(rng.choice(args.rows, args.scattered, replace=False))
    again = time.perf_counter()
    for at in range(0, len(scattered), args.batch):
        ids = scattered[at : at + args.batch]
        table.put(ids, codes[: len(ids)])
    rewritten = time.perf_counter() - again
    table.flush()
    total = time.perf_counter() - start
    disk, resident = os.stat(path).st_blocks * 512, mapped_bytes(path)
    del table
    path.unlink()
    os.sync()  # the freed blocks and any writeback done before the next run starts
    return {
        "kind": kind,
        "put_s": round(written, 3),
        "us_a_row": round(written / args.rows * 1e6, 4),
        "scattered_s": round(rewritten, 3),
        "scattered_us_a_row": round(rewritten / max(1, args.scattered) * 1e6, 3),
        "with_flush_s": round(total, 3),
        "disk_mb": round(disk / 1e6, 1),
        "mapped_mb": round(resident / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--row-bytes", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--scattered", type=int, default=250_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        for kind in ("pwrite", "mapped") if r % 2 == 0 else ("mapped", "pwrite"):
            runs.append(one(args.dir, args, kind))
            print(runs[-1], flush=True)
    result = {
        "cpu": cpu_model(),
        "load": os.getloadavg(),
        "rows": args.rows,
        "row_bytes": args.row_bytes,
        "batch": args.batch,
        "scattered": args.scattered,
        "runs": runs,
    }
    record(result, "fine_write")


if __name__ == "__main__":
    main()
