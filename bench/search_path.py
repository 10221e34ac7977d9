"""Where a search by vector spends its time: each stage in process, then over HTTP.

    python bench/search_path.py --n 200000                 # a temporary library
    python bench/search_path.py --n 200000 --data /tmp/lib # kept: reruns skip loading/building

Loads N "clustered" vectors (bench/scale.py's generator) through the store, builds the index
the policy picks (its build time is reported), then times 200 queries one at a time on one
thread: FAISS alone (the base's own search at the tuned nprobe, k x rescore candidates), the
re-scoring read of exact vectors from SQLite, `LibraryIndex.search`, `Catalog.nearest` (+ the
paths) (wall-clock and CPU ms), and finally `POST /search {"vector"}` against a real daemon
on the same data.
Recall@10 is against exact search over the vectors as stored. Prints one JSON line (also
appended to bench/out/search_path.jsonl) with the CPU model and load.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import OUT_DIR, Daemon, percentiles, progress, record  # noqa: E402
from scale import CHUNK, MODELS, K, Vectors, machine, path_to_id, post_json, truth  # noqa: E402

from imgsearch.catalog import Catalog  # noqa: E402
from imgsearch.store import FileFacts, NewImage, Store  # noqa: E402


def load(store: Store, vectors: Vectors, root: Path) -> float:
    """Write every vector through the store (no daemon, no index); return rows per second."""
    start = time.perf_counter()
    for i, chunk in enumerate(vectors.chunks()):
        items = [
            NewImage(FileFacts(f"{root}/f{i:04d}/{j:05d}.jpg", 1000, 1, f"{i}-{j}", 64, 64), v)
            for j, v in enumerate(chunk)
        ]
        store.images.upsert(items)
        if i % 10 == 0:
            progress(f"loaded {(i + 1) * CHUNK:,} rows")
    return vectors.n / (time.perf_counter() - start)


def timed(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, Any]:
    """Wall-clock and this thread's CPU ms per query (on a busy machine the CPU time is the
    steadier figure: it leaves out the time spent waiting for a core)."""
    fn(queries[0])  # warm: first-touch costs are not a query's
    wall, cpu = [], []
    for q in queries:
        start, used = time.perf_counter(), time.thread_time()
        fn(q)
        cpu.append((time.thread_time() - used) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    return {**percentiles(wall), "cpu": percentiles(cpu)}


def in_process(catalog: Catalog, queries: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)  # as a request thread has it (LibraryIndex.search)
    index = catalog.index
    seg = index._segments  # the stages inside LibraryIndex.search, one by one
    meta = seg.base.meta
    wanted = K * meta.rescore if meta.rescore else K
    nprobe = max(1, meta.nprobe)
    faiss_only = timed(lambda q: seg._search_base(q[None, :], wanted, None, nprobe), queries)
    cands = [seg._search_base(q[None, :], wanted, None, nprobe)[1][0] for q in queries]
    picks = iter(cands * 2)
    fetch = timed(lambda q: index.source.vectors(np.unique(next(picks)).tolist()), queries)
    got = [catalog.nearest(q[None, :], K)[0] for q in queries]
    hits = sum(len({n.id for n in row} & set(w.tolist())) for row, w in zip(got, want, strict=True))
    return {
        "index": index.describe(),
        "faiss_ms": faiss_only,
        "rescore_read_ms": fetch,
        "index_search_ms": timed(lambda q: index.search(q[None, :], K), queries),
        "nearest_ms": timed(lambda q: catalog.nearest(q[None, :], K), queries),
        "nearest_30_ms": timed(lambda q: catalog.nearest(q[None, :], 30), queries),
        "recall_at_10": hits / want.size,
    }


def over_http(data_dir: Path, model: str, queries: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    flags = ["--model", model, "--workers", "1", "--pretrained", "none"]
    times, hits = [], 0
    with Daemon(flags, data_dir, start_timeout=1800) as daemon:
        post_json(daemon.url + "/search", {"vector": queries[0].tolist(), "limit": K})
        for q, w in zip(queries, want, strict=True):
            body, ms = post_json(daemon.url + "/search", {"vector": q.tolist(), "limit": K})
            times.append(ms)
            hits += len({path_to_id(r["image"]) for r in body["results"]} & set(w.tolist()))
    return {"http_search_ms": percentiles(times), "http_recall_at_10": hits / want.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--data", type=Path, help="library folder to reuse (made if missing)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-http", action="store_true", help="skip the daemon")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model = "ViT-B-32"
    model_id, dim = MODELS[model]
    vectors = Vectors(args.n, dim, "clustered")
    data = args.data or Path(OUT_DIR / f"search-path-{args.n}")
    data_dir = data / "data"
    out: dict[str, Any] = {"n": args.n, "dim": dim, **machine()}
    if not (data_dir / "imgsearch.sqlite3").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(data_dir / "imgsearch.sqlite3")
        store.meta.bind_model(model_id, dim)
        out["import_rows_per_s"] = load(store, vectors, data / "lib")
        store.close()
    queries = vectors.queries(args.queries)
    want = truth(vectors, queries)
    start = time.perf_counter()
    catalog = Catalog(data_dir, model_id, dim)
    out["open_or_build_s"] = time.perf_counter() - start
    try:
        out.update(in_process(catalog, queries, want))
    finally:
        catalog.close()
    if not args.no_http:
        out.update(over_http(data_dir, model, queries, want))
    out["load_after"] = machine()["load"]
    record(out, "search_path")


if __name__ == "__main__":
    main()
