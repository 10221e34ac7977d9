"""How much of an IVF index a search must scan for a given recall, on bench/scale.py's data.

    python bench/ivf_reach.py --n 1000000                      # the policy's index for 1M
    python bench/ivf_reach.py --n 1000000 --dist uniform
    python bench/ivf_reach.py --n 1000000 --dist spectral --depth 50
    python bench/ivf_reach.py --n 1000000 --lists 4000 --train bf16   # flat bfloat16 k-means
    python bench/ivf_reach.py --n 1000000 --lists 16000 --train faiss # flat float32 k-means
    python bench/ivf_reach.py --n 1000000 --lists 16000 --train two-level
    python bench/ivf_reach.py --n 1000000 --lists 16000 --train two-level+2
    python bench/ivf_reach.py --n 1000000 --coarse graph       # adds walk an HNSW graph
    python bench/ivf_reach.py --index DATA/index/base-*.faiss --n 10000000 --nprobe 1088

The first form regenerates bench/scale.py's deterministic vectors (float16 as stored), builds
the index the policy gives a library of N (`Policy.spec`: its lists, its training sample, its
codes; codes of whole vectors where the residuals vary too evenly, as the daemon's build
decides), and for each nprobe searches bench/scale.py's new-photo queries one at a time on one
thread: the codes FAISS actually compared (`indexIVF_stats.ndis`: the probed lists' real
sizes, not nprobe x the mean list), CPU time per query, and recall@10 against exact search
once the candidates (depth x 10) are re-scored with the exact vectors. The lists' imbalance
factor (FAISS's: 1 when all lists are equal) says how much bigger than the mean the lists a
query probes are. `--index` reads a saved base instead (a daemon's, e.g. bench/scale.py's
10M library) and reports the imbalance and the codes compared at the given nprobe (no recall:
the vectors are not regenerated). Both report the lists' sizes (median, mean, the biggest 5%'s
share) and their centres' cosine to the mean direction and to their nearest other centre.
Appends one JSON line to bench/out/ivf_reach.jsonl.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, cpu_model, progress, record  # noqa: E402
from scale import CHUNK, DISTRIBUTIONS, Vectors  # noqa: E402

from imgsearch.cpu import native_bf16  # noqa: E402
from imgsearch.index import kmeans, rotation  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402
from imgsearch.index.base import for_adding  # noqa: E402
from imgsearch.index.build import _unrotated  # noqa: E402
from imgsearch.index.coarse import centre_norms  # noqa: E402
from imgsearch.index.scans import FLAT_COARSE_FROM, preassigned, search_ivf  # noqa: E402

DIM = 512
K = 10


def stored(vectors: Vectors) -> np.ndarray:
    """Every vector as the store keeps it (float16), as float32."""
    out = np.empty((vectors.n, vectors.dim), np.float32)
    for i, chunk in enumerate(vectors.chunks()):
        out[i * CHUNK : i * CHUNK + len(chunk)] = chunk.astype(np.float16)
    return out


def truth(x: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best: list[np.ndarray] = []
    for start in range(0, len(x), 200_000):
        sims = queries @ x[start : start + 200_000].T
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        best.append(np.stack([top + start, np.take_along_axis(sims, top, axis=1)], axis=2))
    both = np.concatenate(best, axis=1)
    order = np.argsort(-both[:, :, 1], axis=1)[:, :K]
    return np.take_along_axis(both[:, :, 0], order, axis=1).astype(np.int64)


def scan(
    index: Any, queries: np.ndarray, nprobe: int, depth: int
) -> tuple[np.ndarray, float, float]:
    """Candidates of each query at `nprobe`; mean codes compared and CPU ms per query."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    graph = faiss.downcast_index(ivf.quantizer)
    faiss.cvar.indexIVF_stats.reset()
    start = time.thread_time()
    if isinstance(graph, faiss.IndexHNSW) and nprobe >= FLAT_COARSE_FROM:  # as the daemon:
        flat = faiss.downcast_index(graph.storage)  # the centroids scanned flat
        found = []
        for q in rotation.into_space(index, queries):  # (the IVF's own space)
            dist, lists = flat.search(q[None], nprobe)
            found.append(preassigned(ivf, q[None], depth * K, lists, dist, None)[1][0])
    else:  # (as the daemon: a centred index's list terms made inner products, coarse.inner)
        norms = centre_norms(index)
        found = [search_ivf(index, q[None], depth * K, nprobe, norms)[1][0] for q in queries]
    cpu = (time.thread_time() - start) * 1000 / len(queries)
    return np.array(found), faiss.cvar.indexIVF_stats.ndis / len(queries), cpu


def recall(x: np.ndarray, queries: np.ndarray, candidates: np.ndarray, want: np.ndarray) -> float:
    hits = 0
    for q, cand, true in zip(queries, candidates, want, strict=True):
        cand = cand[cand >= 0]
        top = cand[np.argsort(-(x[cand] @ q))[:K]]
        hits += len(np.intersect1d(top, true))
    return hits / (K * len(queries))


def build(
    x: np.ndarray, train: str, lists: int = 0, coarse: str = "policy", pq: int = 0
) -> tuple[Any, dict[str, Any]]:
    """The policy's index for len(x) vectors (`lists`: that many lists instead), trained and
    filled. `train`: "policy" (the daemon's: kmeans.train, two-level from the policy's
    TWO_LEVEL_MIN_LISTS, bfloat16 where native), ten flat iterations of "faiss" (float32) or
    "bf16" k-means, or kmeans.two_level without ("two-level") or with ("two-level+2") its two
    iterations over every list. `coarse`: "policy" (the daemon's quantizer), "flat" (every
    centroid scanned, adds and searches) or "graph" (an HNSW graph over the centroids, as
    earlier versions from 8,192 lists: adds walk it at HNSW_ADD_EF, searches as the daemon's
    do, a flat scan of the centroids from FLAT_COARSE_FROM lists probed). `pq`: that many
    4-bit fast-scan sub-quantizers instead of the policy's."""
    import faiss

    spec = P.Policy().spec(len(x), x.shape[1])
    if lists:
        factory = spec.factory.replace(f"IVF{spec.lists}", f"IVF{lists}")
        spec = replace(spec, factory=factory, lists=lists)
    if pq:
        spec = replace(spec, factory=re.sub(r"PQ\d+x4fs", f"PQ{pq}x4fs", spec.factory))
    if coarse == "flat":
        spec = replace(spec, factory=spec.factory.replace("_HNSW32", ""))
    elif coarse == "graph" and "_HNSW32" not in spec.factory:
        spec = replace(
            spec, factory=spec.factory.replace(f"IVF{spec.lists}", f"IVF{spec.lists}_HNSW32")
        )
    factory, rotated = rotation.factory_of(spec.factory)
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(P.SEED)
    sample = x[np.sort(rng.choice(len(x), P.train_size(spec.lists, len(x)), replace=False))]
    start = time.perf_counter()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    never = 1 << 62  # lists from which kmeans.train goes two-level: not for the flat ones
    if train.startswith("two-level"):
        refine = kmeans.REFINE_ITERATIONS if train == "two-level+2" else 0
        centres = kmeans.two_level(sample, spec.lists, native_bf16(), P.SEED, refine)
        faiss.extract_index_ivf(index).quantizer.add(centres)
        index.train(sample)  # the PQ codebooks; the lists are given
    elif train == "policy":
        kmeans.train(index, sample, native_bf16(), P.SEED, P.TWO_LEVEL_MIN_LISTS)
    else:
        kmeans.train(index, sample, train == "bf16", P.SEED, never)
    share = rotation.fit(index, sample).share(rotation.coded(index)) if rotated else 1.0
    if share < rotation.MIN_CODED_SHARE:  # residuals that vary evenly (as build.py decides)
        spec, index = _unrotated(spec, index, sample, x.shape[1], share)
    elif rotated:
        index = rotation.train(index, sample)  # (the codes trained again)
    trained = time.perf_counter() - start
    for_adding(index)
    index.add(x)
    built = {
        "factory": spec.factory, "train_s": trained, "build_s": time.perf_counter() - start,
        "sample": len(sample),
    }  # fmt: skip
    return index, built


def policy_index(x: np.ndarray, dist: str) -> tuple[Any, dict[str, Any]]:
    """build(x, "policy"), kept in bench/out/ (probe_rule-DIST-N.faiss) and read from there
    by later runs of the same size and distribution."""
    import faiss

    cached = OUT_DIR / f"probe_rule-{dist}-{len(x)}.faiss"
    if cached.exists():
        return faiss.read_index(str(cached)), {"index": str(cached)}
    progress("building the policy's index")
    index, built = build(x, "policy")
    faiss.write_index(index, str(cached))
    return index, built


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--depth", type=int, default=10, help="candidates re-scored: depth x 10")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[])
    parser.add_argument("--index", type=Path, help="a saved base: imbalance and codes only")
    parser.add_argument("--lists", type=int, default=0, help="lists instead of the policy's")
    parser.add_argument(
        "--train", choices=("policy", "faiss", "bf16", "two-level", "two-level+2"),
        default="policy", help="the lists' k-means: the daemon's (two-level from the policy's "
        "TWO_LEVEL_MIN_LISTS), ten iterations of FAISS's float32 or imgsearch's bfloat16 "
        "(index/kmeans.py), or two-level clustering without / with its iterations over every list",
    )  # fmt: skip
    parser.add_argument(
        "--coarse", choices=("policy", "flat", "graph"), default="policy",
        help="the coarse quantizer: the policy's, a flat one (every centroid scanned), or an "
        "HNSW graph (walked at HNSW_ADD_EF by adds, scanned flat by searches from "
        "FLAT_COARSE_FROM lists probed, as the daemon searches a graph)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.train == "bf16" and not native_bf16():
        progress("warning: this CPU has no native bfloat16: the bf16 k-means is emulated (slow)")
    vectors = Vectors(args.n, DIM, args.dist)
    queries = vectors.queries(args.queries)
    result: dict[str, Any] = {
        "bench": "ivf_reach", "cpu": cpu_model(), "load": os.getloadavg(), "n": args.n,
        "dist": args.dist, "depth": args.depth, "train": args.train, "coarse": args.coarse,
    }  # fmt: skip
    if args.index:
        index = faiss.read_index(str(args.index))
        x = None
        result["factory"] = str(args.index)
    else:
        progress(f"regenerating {args.n:,} vectors")
        x = stored(vectors)
        progress("building the policy's index")
        index, built = build(x, args.train, args.lists, args.coarse)
        result.update(built)
        progress(f"built {built}")
    faiss.omp_set_num_threads(1)  # as the daemon searches: one thread a query
    ivf = faiss.extract_index_ivf(index)
    result["lists"], result["ntotal"] = int(ivf.nlist), int(ivf.ntotal)
    result["imbalance"] = float(ivf.invlists.imbalance_factor())
    result["list_sizes"] = list_sizes(ivf)
    progress(f"imbalance {result['imbalance']:.2f}; lists {result['list_sizes']}")
    want = truth(x, queries) if x is not None else None
    rows = []
    steps = args.nprobe or sorted({max(1, int(ivf.nlist * f)) for f in (0.01, 0.03, 0.1, 0.3)})
    for nprobe in steps:
        candidates, codes, cpu = scan(index, queries, nprobe, args.depth)
        row = {
            "nprobe": nprobe, "lists_share": nprobe / ivf.nlist, "codes": codes,
            "codes_share": codes / ivf.ntotal, "cpu_ms": cpu, "ns_per_code": cpu * 1e6 / codes,
        }  # fmt: skip
        if want is not None and x is not None:
            row["recall"] = recall(x, queries, candidates, want)
        progress(" ".join(f"{k} {v:.4g}" for k, v in row.items()))
        rows.append(row)
    result["rows"] = rows
    record(result, "ivf_reach")


def list_sizes(ivf: Any) -> dict[str, float]:
    """The lists' median and mean size, the share of the codes the biggest 5% hold, and where
    their centres lie against the smallest quarter's: the mean cosine to the library's mean
    direction (the centres weighted by their lists' sizes) and to the nearest other centre
    (big lists whose centres crowd round the mean direction are hubs every query probes)."""
    import faiss

    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.float64)
    centres = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    mean = (centres * sizes[:, None]).sum(axis=0)
    to_mean = centres @ (mean / np.linalg.norm(mean))
    nearest = faiss.knn(centres, centres, 2, metric=faiss.METRIC_INNER_PRODUCT)[0][:, 1]
    order = np.argsort(-sizes)
    top, bottom = order[: max(1, len(order) // 20)], order[3 * len(order) // 4 :]
    return {
        "median": float(np.median(sizes)), "mean": float(sizes.mean()),
        "top_5pct_share": float(sizes[top].sum() / max(1.0, sizes.sum())),
        "top_5pct_cos_to_mean": float(to_mean[top].mean()),
        "bottom_quarter_cos_to_mean": float(to_mean[bottom].mean()),
        "top_5pct_cos_to_nearest": float(nearest[top].mean()),
        "bottom_quarter_cos_to_nearest": float(nearest[bottom].mean()),
    }  # fmt: skip


if __name__ == "__main__":
    main()
