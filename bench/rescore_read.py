"""The re-scoring read of a search: k x depth stored vectors from SQLite, by random ids.

    python bench/rescore_read.py --data DATA_DIR                  # bench/scale.py --keep's data
    python bench/rescore_read.py --data DATA_DIR --rows 100 40 --rounds 1500 --cache-mb 0 64
    python bench/rescore_read.py --data DATA_DIR --rows 100 --cache-mb 0 --parts 1 4 8

A search of quantized codes re-scores its best candidates with their exact vectors, read from
SQLite by id (imgsearch.index.reads.Searcher.vectors: one read, or READ_PARTS parts side by
side from READ_SPLIT_MIN rows). A query's nearest neighbours lie anywhere in the table, so the
ids are random present ids. Each way of reading (rows a read; one thread, or --parts threads
side by side; the reader connections' page cache: SQLite's default 2 MB or --cache-mb) reads
its own random ids, the ways taken in turn, --rounds reads each; the first fifth of each is a
warm-up (the connections' caches fill). With --again each read is repeated at once: the same
rows with their pages in the page cache, to tell the disk's part from SQLite's. Prints wall
ms p50 / p99 and CPU ms of the process a read, the CPU model and load; appends one JSON line
to bench/out/rescore_read.jsonl. Nothing is written to DATA_DIR (opened read-only).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, percentiles, progress, record  # noqa: E402

from imgsearch.catalog import DB_FILE  # noqa: E402
from imgsearch.index.reads import READ_PARTS  # noqa: E402
from imgsearch.store.images import vector_chunks  # noqa: E402


class Readers:
    """One read-only connection a thread, with a page cache of `cache_mb` (0: SQLite's)."""

    def __init__(self, db: Path, cache_mb: int) -> None:
        self.db, self.cache_mb = db, cache_mb
        self.local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, check_same_thread=False)
            if self.cache_mb:
                conn.execute(f"PRAGMA cache_size=-{self.cache_mb * 1024}")
            self.local.conn = conn
        return conn

    def read(self, ids: list[int]) -> int:
        """Rows read, as the store reads them (images.Images.vectors)."""
        marks = ",".join("?" * len(ids))
        cursor = self.conn().execute(
            f"SELECT id, vector FROM images WHERE id IN ({marks}) AND missing=0 ORDER BY id", ids
        )
        return sum(len(chunk.ids) for chunk in vector_chunks(cursor, 10_000, 0))


def way(readers: Readers, pool: ThreadPoolExecutor | None, parts: int, ids: np.ndarray) -> int:
    """Read `ids` on this thread, or in `parts` parts side by side (`pool` runs the others)."""
    if pool is None:
        return readers.read(ids.tolist())
    pieces = [p.tolist() for p in np.array_split(ids, parts)]
    others = [pool.submit(readers.read, p) for p in pieces[1:]]
    return readers.read(pieces[0]) + sum(o.result() for o in others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 40])
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--cache-mb", type=int, nargs="+", default=[0, 64])
    parser.add_argument(
        "--parts", type=int, nargs="+", default=[1, READ_PARTS], help="threads a read is split over"
    )
    parser.add_argument(
        "--again", action="store_true", help="also read each read's ids a second time at once"
    )
    args = parser.parse_args()
    db = args.data / DB_FILE
    top = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT max(id) FROM images")
    max_id = int(top.fetchone()[0])
    progress(f"{db}: ids up to {max_id:,}; {db.stat().st_size / 1e9:.1f} GB")
    rng = np.random.default_rng(7)
    ways: list[tuple[str, int, Readers, ThreadPoolExecutor | None, int]] = []
    for rows, cache_mb in itertools.product(args.rows, args.cache_mb):
        for parts in args.parts:
            pool = ThreadPoolExecutor(parts - 1) if parts > 1 else None
            threads = f"split in {parts}" if parts > 1 else "one thread"
            cache = f"cache {cache_mb} MB" if cache_mb else "cache 2 MB (default)"
            name = f"{rows} rows, {threads}, {cache}"
            ways.append((name, rows, Readers(db, cache_mb), pool, parts))
    load = os.getloadavg()[0]
    names = [w[0] for w in ways] + [f"{w[0]}, read again" for w in ways if args.again]
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, float] = dict.fromkeys(names, 0.0)
    warm = args.rounds // 5
    for round_ in range(args.rounds):
        for name, rows, readers, pool, parts in ways:
            ids = np.unique(rng.integers(1, max_id + 1, rows))
            for again in (False, True) if args.again else (False,):
                c0, t0 = time.process_time(), time.perf_counter()
                way(readers, pool, parts, ids)
                if round_ >= warm:
                    key = f"{name}, read again" if again else name
                    times[key].append((time.perf_counter() - t0) * 1000)
                    cpu[key] += (time.process_time() - c0) * 1000
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "load": load,
        "db_gb": db.stat().st_size / 1e9,
        "ways": {},
    }
    print(f"{cpu_model()}, load {load:.2f}, {args.rounds - warm} reads a way after the warm-up")
    for name in times:
        pct = percentiles(times[name])
        cpu_ms = cpu[name] / len(times[name])
        result["ways"][name] = {"ms": pct, "cpu_ms": cpu_ms}
        print(f"{name:58s} p50 {pct['p50']:6.3f} ms  p99 {pct['p99']:6.3f} ms  CPU {cpu_ms:.3f} ms")
    record(result, "rescore_read")


if __name__ == "__main__":
    main()
