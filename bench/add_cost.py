"""What the HNSW coarse assignment's efSearch costs and buys when vectors are added (encoded).

    python bench/add_cost.py --rows 300000 --ef 16 8 4

An index of the 10M library's kind (`IVF12649_HNSW32,PQ256x4fs`, the policy's factory for
10M at 512-d) is trained on bench/scale.py's cached clustered vectors (the 1M shards; a
10-per-list sample, enough to time and compare), then the first ROWS vectors are added to a
copy of it once per efSearch (FAISS's default, 16, is what an import uses today), on one
thread as the import's encoding runs: microseconds a row, the share of rows given the list a
flat scan of the centres would give, and recall@10 of bench/scale.py-style new queries
(at each --nprobe, 10x re-scoring with exact vectors) against exact search. Prints one
JSON object and appends it to bench/out/add_cost.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import OUT_DIR, progress, record, shard_vectors  # noqa: E402
from scale import K, machine  # noqa: E402

from imgsearch.index import policy as P  # noqa: E402

DIM = 512
# The 10M factory of the policy of its day (an HNSW coarse quantizer, before 2026-12-03 21:00).
FACTORY = "IVF12649_HNSW32,PQ256x4fs"
SHARDS = OUT_DIR / "scale-shards-open_clip_ViT-B-32_random-clustered-1000000"


def load(rows: int) -> np.ndarray:
    x = shard_vectors(SHARDS, rows, DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(
    index: Any, vectors: np.ndarray, queries: np.ndarray, want: np.ndarray, nprobe: int
) -> float:
    """recall@10 of `queries` at `nprobe` (efSearch as the daemon sets it), 10x re-scored."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    coarse = faiss.SearchParametersHNSW()
    coarse.efSearch = max(P.HNSW_MIN_EF, P.HNSW_EF_PER_PROBE * nprobe)
    params.quantizer_params = coarse
    _, found = index.search(queries, 10 * K, params=params)
    sims = np.einsum("qd,qkd->qk", queries, vectors[np.maximum(found, 0)])
    sims[found < 0] = -np.inf
    best = np.take_along_axis(found, np.argsort(-sims, axis=1)[:, :K], axis=1)
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(best, want, strict=True)]))


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 8, 4])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 128, 512, 1011])
    args = parser.parse_args()
    out: dict[str, Any] = {**machine(), "factory": FACTORY, "rows": args.rows}
    vectors = load(args.rows)
    template = faiss.index_factory(DIM, FACTORY, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(template)
    lists = int(ivf.nlist)
    sample = vectors[np.random.default_rng(P.SEED).permutation(len(vectors))[: 10 * lists]]
    started = time.perf_counter()
    template.train(sample)
    out["train_s"] = time.perf_counter() - started
    progress(f"trained {FACTORY} on {len(sample):,} in {out['train_s']:.0f}s")
    centres = ivf.quantizer.reconstruct_n(0, lists)
    rng = np.random.default_rng(777)
    picked = vectors[rng.integers(0, len(vectors), args.queries)]
    queries = picked + 0.5 * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, want = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    _, nearest = faiss.knn(vectors[:20_000], centres, 1, metric=faiss.METRIC_INNER_PRODUCT)
    faiss.omp_set_num_threads(1)
    out["by_ef"] = {}
    for ef in args.ef:
        index = faiss.clone_index(template)
        graph = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
        graph.hnsw.efSearch = ef
        _, assigned = graph.search(vectors[:20_000], 1)
        started = time.perf_counter()
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        us = (time.perf_counter() - started) / len(vectors) * 1e6
        row: dict[str, Any] = {
            "add_us_per_row": us,
            "same_list_as_flat": float(np.mean(assigned[:, 0] == nearest[:, 0])),
        }
        for nprobe in args.nprobe:
            row[f"recall_at_10_nprobe_{nprobe}"] = recall(index, vectors, queries, want, nprobe)
        out["by_ef"][ef] = row
        progress(f"efSearch {ef}: {row}")
    record(out, "add_cost")


if __name__ == "__main__":
    main()
