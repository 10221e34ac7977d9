"""Would a graph index (HNSW) answer bench/scale.py's searches faster than the daemon's IVF?

    python bench/graph_reach.py --n 1000000                            # HNSW32 over float32
    python bench/graph_reach.py --n 1000000 --spec HNSW32,SQ8 --ef 64 256 1024
    python bench/graph_reach.py --n 1000000 --entry 4000 --nprobe 8 32  # IVF-seeded level 0

Regenerates bench/scale.py's deterministic vectors (float16 as stored) and its new-photo
queries, builds a FAISS HNSW index of them (`--spec`, an index_factory string; inner product;
RaBitQ storage in L2, the same ranking for unit vectors) on every core, and for each efSearch
searches the queries one at a time on one thread (as the daemon does): p50 / p99 ms and
recall@10 against exact search once the candidates (efSearch of them) are re-scored
with the exact vectors, and the share of queries whose own source vector (the near-duplicate
a "new photo" was made from) is found at all.

`--entry LISTS` also tries FAISS's `search_level_0` seeded by an IVF: the best stored vectors
of the `--nprobe` nearest of LISTS k-means lists (flat codes) are the entry points of the
graph's bottom layer, for data whose clusters the upper layers do not link.

It also says what the ground truth is made of: the share of each query's true top 10 that
belong to the cluster its source vector was drawn from (bench/scale.py's generator). Appends
one JSON line to bench/out/graph_reach.jsonl.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from ivf_reach import DIM, K, recall, stored, truth  # noqa: E402
from scale import Vectors  # noqa: E402

from imgsearch.index import kmeans  # noqa: E402


def build(x: np.ndarray, spec: str, efc: int) -> tuple[Any, float, float]:
    """(index, seconds, CPU seconds) of an HNSW `spec` holding `x` (ids = row numbers)."""
    import faiss

    metric = faiss.METRIC_L2 if "RaBitQ" in spec else faiss.METRIC_INNER_PRODUCT
    index = faiss.index_factory(DIM, spec, metric)
    index.hnsw.efConstruction = efc
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    start, cpu = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(0)
    index.train(x[np.sort(rng.choice(len(x), min(len(x), 100_000), replace=False))])
    for at in range(0, len(x), 100_000):
        index.add(x[at : at + 100_000])
        progress(f"{spec}: {at + 100_000:,} added, {time.perf_counter() - start:.0f} s")
    return index, time.perf_counter() - start, time.process_time() - cpu


def seeds(x: np.ndarray, lists: int) -> Any:
    """An IVF-Flat over `x` with `lists` k-means lists (bfloat16 where native, else FAISS's)."""
    import faiss

    from imgsearch.cpu import native_bf16

    index = faiss.index_factory(DIM, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1)
    sample = x[np.sort(rng.choice(len(x), min(len(x), 40 * lists), replace=False))]
    kmeans.train(index, sample, native_bf16(), 1, 1 << 62)  # ten flat iterations
    index.add(x)
    return index


def timed(search: Any, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's candidates and its ms (one query at a time)."""
    found, ms = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q[None]))
        ms.append((time.perf_counter() - start) * 1000)
    return np.array(found), np.array(ms)


def row(name: dict[str, Any], found: np.ndarray, ms: np.ndarray, ctx: dict[str, Any]) -> dict:
    out = {
        **name, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "recall": recall(ctx["x"], ctx["queries"], found, ctx["want"]),
        "source_found": float(np.mean([s in f for s, f in zip(ctx["src"], found, strict=True)])),
    }  # fmt: skip
    progress(
        " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items())
    )
    return out


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--spec", default="HNSW32,Flat", help="an index_factory HNSW string")
    parser.add_argument("--efc", type=int, default=80, help="efConstruction")
    parser.add_argument("--ef", type=int, nargs="*", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--entry", type=int, default=0, help="IVF lists seeding level 0")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[8, 32])
    args = parser.parse_args()
    vectors = Vectors(args.n, DIM, "clustered")
    queries, src = vectors.queries_and_sources(args.queries)
    progress(f"regenerating {args.n:,} vectors")
    x = stored(vectors)
    want = truth(x, queries)
    lab = vectors.labels()
    mates = float((lab[want] == lab[src][:, None]).mean())
    progress(f"share of the true top {K} in the query's own cluster: {mates:.4f}")
    result: dict[str, Any] = {
        "bench": "graph_reach", "cpu": cpu_model(), "load": os.getloadavg(), "n": args.n,
        "spec": args.spec, "efc": args.efc, "clusters": len(vectors.centres),
        "truth_in_own_cluster": mates,
    }  # fmt: skip
    index, seconds, cpu = build(x, args.spec, args.efc)
    result.update(build_s=seconds, build_cpu_s=cpu, rate=args.n / seconds)
    result["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ctx = {"x": x, "queries": queries, "want": want, "src": src}
    faiss.omp_set_num_threads(1)  # as the daemon searches: one thread a query
    rows = []
    for ef in args.ef:
        params = faiss.SearchParametersHNSW(efSearch=ef)

        def plain(q: np.ndarray, p: Any = params, d: int = ef) -> np.ndarray:
            return index.search(q, d, params=p)[1][0]

        rows.append(row({"ef": ef}, *timed(plain, queries), ctx))
    if args.entry:
        sp = faiss.swig_ptr
        ivf = seeds(x, args.entry)
        for nprobe in args.nprobe:
            for ef in args.ef:

                def seeded(q: np.ndarray, n: int = nprobe, e: int = ef, d: int = ef) -> Any:
                    dist, near = ivf.search(q, 4, params=faiss.SearchParametersIVF(nprobe=n))
                    dist, near = np.ascontiguousarray(dist), near.astype(np.int32)  # storage ids
                    out_d = np.empty((1, d), np.float32)
                    out_i = np.empty((1, d), np.int64)
                    hp = faiss.SearchParametersHNSW(efSearch=e)
                    index.search_level_0(
                        1, sp(q), d, sp(near), sp(dist), sp(out_d), sp(out_i), 4, 2, hp
                    )  # the entries' similarities as the IVF gives them
                    return out_i[0]

                rows.append(row({"entry_nprobe": nprobe, "ef": ef}, *timed(seeded, queries), ctx))
    result["rows"] = rows
    record(result, "graph_reach")


if __name__ == "__main__":
    main()
