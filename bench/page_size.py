"""SQLite's page size against the rows it holds: bytes of database an image, and the re-scoring
read's time, for each page size and vector dimension.

    python bench/page_size.py                                   # 512, 768, 1280-d; 50,000 rows
    python bench/page_size.py --dims 1280 --rows 200000 --pages 4096 16384

A row lies whole in one page unless it is nearly a page long, so rows of ~2.7 KB (a 1280-d
float16 vector and its path and facts) fill 4 KB pages one each. For each dimension and page
size this writes --rows images (random unit vectors, paths like a photo archive's) through the
daemon's own store (`imgsearch.store.Store`, into a file whose page size was set first),
checkpoints it, and reports the bytes of database an image; then it reads --reads sets of 40
and of 100 random ids' vectors the way a search re-scores (`Store.vectors(ids=...)`, the
file in the page cache), the page sizes of a dimension taken in turns, twice, and reports p50
ms a read. Also prints the page size the daemon picks for a new database of each dimension
(`imgsearch.store.db.page_size`). Appends one JSON line to bench/out/page_size.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cpu_model, record  # noqa: E402

from imgsearch.store import ROW_EXTRA, FileFacts, NewImage, Store  # noqa: E402
from imgsearch.store.db import page_size  # noqa: E402

BATCH = 5_000
READS = (40, 100)


def written(path: Path, page: int, dim: int, rows: int) -> float:
    """Bytes of database an image, once `rows` images are written into a file of `page`."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA page_size={page}")
        conn.execute("VACUUM")  # an empty file takes the page size
    store = Store(path, dim)
    rng = np.random.default_rng(dim)
    for start in range(0, rows, BATCH):
        vectors = rng.standard_normal((min(BATCH, rows - start), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.images.upsert([
            NewImage(FileFacts(f"/home/user/Pictures/archive/{i // 1000:04d}/IMG_{i:08d}.jpg",
                               2_000_000 + i, 1_700_000_000_000_000_000 + i, f"{i:064x}",
                               4032, 3024), v)
            for i, v in enumerate(vectors, start)
        ])  # fmt: skip
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        got = conn.execute("PRAGMA page_size").fetchone()[0]
    assert got == page, (got, page)
    return os.path.getsize(path) / rows


def read_ms(store: Store, ids: np.ndarray, count: int, reads: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(reads):
        picked = sorted(int(i) for i in rng.choice(ids, count, replace=False))
        start = time.perf_counter()
        for _chunk in store.vectors(ids=picked):
            pass
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768, 1280])
    parser.add_argument("--pages", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    print(f"{cpu_model()}, load {os.getloadavg()[0]:.2f}; row extra {ROW_EXTRA} B")
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg(), "rows": args.rows,
                           "results": []}  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for dim in args.dims:
            paths = {page: Path(tmp) / f"{dim}-{page}.sqlite3" for page in args.pages}
            sizes = {page: written(paths[page], page, dim, args.rows) for page in args.pages}
            stores = {page: Store(paths[page], dim) for page in args.pages}
            ids = stores[args.pages[0]].ids()
            times: dict[tuple[int, int], list[float]] = {}
            for turn in range(2):
                for page in args.pages:
                    for count in READS:
                        times.setdefault((page, count), []).extend(
                            read_ms(stores[page], ids, count, args.reads // 2, turn * 7 + count)
                        )
            for page in args.pages:
                stores[page].close()
                p50 = {count: float(np.percentile(times[page, count][20:], 50)) for count in READS}
                chosen = " (chosen)" if page == page_size(ROW_EXTRA + 2 * dim) else ""
                print(f"{dim}-d, {page:>5} B pages{chosen}: {sizes[page]:7,.0f} B an image; "
                      + ", ".join(f"{c} rows {p50[c]:.3f} ms" for c in READS))  # fmt: skip
                out["results"].append({"dim": dim, "page": page, "bytes_per_image": sizes[page],
                                       "read_p50_ms": p50, "chosen": bool(chosen)})  # fmt: skip
                paths[page].unlink()
    record(out, "page_size")


if __name__ == "__main__":
    main()
