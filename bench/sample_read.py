"""How long a training's sample takes to read from a big library, and how long a stop waits.

    python bench/sample_read.py --data /work/big/K10/data --rows 327680 --cold

A training reads its sample (random stored rows, policy.train_size of them) through
`index.build.sampled`, SAMPLE_READ rows a query, and checks for a stop between reads: a
shutdown during that read waits at most one read. This opens DATA_DIR's store (no daemon may
run on it), draws --rows random present ids as a build does, and times `sampled` on them,
each read apart. --cold first drops the page cache (as root: `sync` and
/proc/sys/vm/drop_caches), as after a reboot or when the index has pushed the database out.
Prints the whole read, rows a second and the slowest read (the longest a stop waits), with the
CPU model and load; appends one JSON line to bench/out/sample_read.jsonl.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402

from imgsearch.catalog import DB_FILE, StoreSource  # noqa: E402
from imgsearch.index import build  # noqa: E402
from imgsearch.store import Store  # noqa: E402


def drop_cache() -> bool:
    """Drop Linux's page cache; False where this process may not."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


class Timed(StoreSource):
    """The store as a build reads it, each `vectors` call timed."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.reads: list[float] = []

    def vectors(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        out = super().vectors(ids)
        self.reads.append(time.perf_counter() - start)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=327_680)
    parser.add_argument("--cold", action="store_true", help="drop the page cache first")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    store = Store(args.data / DB_FILE)
    try:
        source = Timed(store)
        present = source.ids()
        ids = np.sort(np.random.default_rng(args.seed).choice(present, args.rows, replace=False))
        dropped = drop_cache() if args.cold else False
        if args.cold and not dropped:
            progress("could not drop the page cache (not root?): the read is warm")
        progress(f"{cpu_model()}, load {os.getloadavg()}; {args.rows} of {len(present)} rows")
        wall, cpu = time.perf_counter(), time.process_time()
        got = build.sampled(source, ids, threading.Event())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        store.close()
    reads = np.array(source.reads)
    result = {
        "cpu": cpu_model(), "load": os.getloadavg(), "data": str(args.data),
        "library": len(present), "rows": len(got), "cold": dropped,
        "per_read": build.SAMPLE_READ, "reads": len(reads), "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2), "rows_a_second": round(len(got) / wall),
        "slowest_read_s": round(float(reads.max()), 3),
        "median_read_s": round(float(np.median(reads)), 3),
    }  # fmt: skip
    record(result, "sample_read")


if __name__ == "__main__":
    main()
