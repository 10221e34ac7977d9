"""Filtered search: what `folder=`/`where=` cost, and that a search without filters costs the same.

In process, no daemon: a real SQLite store (N images, two metadata keys each, in 10 folders)
and the real FAISS index (N random unit vectors). Reports, in one run:

* unfiltered search through the index package's `Segments.search` (an exact base, as the daemon
  holds up to 50,000 images) vs FAISS's own `search` on the same index (the ratio is the overhead
  of the filter plumbing on a search without filters);
* searches among allowed ids (1%, 10%, 50% of the library) vs unfiltered;
* the SQLite side: ids of one folder (a path range) and of one `where` value.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/filters.py --images 100000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import cpu_model  # noqa: E402

from imgsearch.index.base import Base, empty_exact  # noqa: E402
from imgsearch.index.segments import Segments  # noqa: E402
from imgsearch.metadata import Filters, allowed_ids  # noqa: E402
from imgsearch.store import FileFacts, NewImage, Store  # noqa: E402

FOLDERS = 10


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(
    a: Callable[[], object], b: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median seconds of `a` and of `b`, called alternately (so a busy spell hits both)."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def build_store(path: Path, n: int) -> Store:
    store = Store(path)
    batch = []
    vector = np.zeros(4, np.float32)
    for i in range(n):
        facts = FileFacts(f"/lib/f{i % FOLDERS}/img{i:07d}.jpg", 1, 1, f"{i:064x}", 1, 1)
        batch.append(NewImage(facts, vector))
        if len(batch) == 5000:
            store.images.upsert(batch)
            batch = []
    if batch:
        store.images.upsert(batch)
    ids = store.ids().tolist()
    objects = {i: {"sku": f"S{i % 1000}", "colour": ("red", "blue")[(i // 10) % 2]} for i in ids}
    store.metadata.replace(objects)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    n, dim = args.images, args.dim
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    empty = empty_exact("bench", dim, 0)
    empty.index.add_with_ids(vectors, ids)
    base = Base(empty.index, ids, empty.meta)
    index = Segments(base, threading.Lock())
    query = vectors[:1].copy()
    raw, plain = timed_pair(
        lambda: base.index.search(query, 10),
        lambda: index.search(query, 10, None, 1),
        args.repeat,
    )
    out: dict[str, object] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "images": n,
        "dim": dim,
        "faiss_search_ms": round(raw * 1000, 3),
        "unfiltered_search_ms": round(plain * 1000, 3),
        "unfiltered_over_faiss": round(plain / raw, 3),
    }
    for share in (0.01, 0.1, 0.5):
        allowed = np.sort(rng.choice(ids, int(n * share), replace=False))
        t = timed(lambda a=allowed: index.search(query, 10, a, 1), args.repeat)
        out[f"allowed_{share:g}_ms"] = round(t * 1000, 3)
        out[f"allowed_{share:g}_over_unfiltered"] = round(t / plain, 3)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp) / "bench.sqlite3", n)
        folder = Filters(folders=("/lib/f3",))
        where = Filters(where={"sku": ["S42"]})
        both = Filters(folders=("/lib/f3",), where={"colour": ["red"]})
        for name, f in (("folder", folder), ("where_sku", where), ("folder_and_colour", both)):
            found = allowed_ids(store, f)
            count = 0 if found is None else len(found)
            out[f"sqlite_{name}_ms"] = round(timed(lambda f=f: allowed_ids(store, f), 10) * 1000, 3)
            out[f"sqlite_{name}_ids"] = count
        store.close()
    out["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(out, indent=2))
    if max(out["load_average"]) > (os.cpu_count() or 1) / 2:  # type: ignore[type-var]
        print(
            "warning: the machine was busy; ratios hold better than absolute times", file=sys.stderr
        )


if __name__ == "__main__":
    main()
