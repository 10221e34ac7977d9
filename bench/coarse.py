"""The coarse assignment of one search: its nearest lists among the centres, one thread or two.

    python bench/coarse.py                          # 16,384 centres (10M's), nprobe 1,329
    python bench/coarse.py --lists 16000 --nprobe 1024 --dim 512

A search first compares its query with every list's centre (a flat scan: 16,384 x 512 floats,
32 MB, at 10M) and keeps the nprobe nearest. This times, one query at a time, FAISS's own
search of the flat quantizer on the calling thread against the daemon's split
(`coarse.Coarse`: the centres as float16, half compared on a helper thread, the halves
merged), and against the same split of the float32 centres (the daemon's before 2026-12-06),
with each half by BLAS's product (one BLAS thread) and numpy's partition, and with the centres
as bfloat16 and as 8 bits a dimension (FAISS's QT_8bit), each with the caches warm (the same
centres searched back to back) and cold (a 256 MB array read between queries, as the scan of
the probed lists does in the daemon), and checks how many of FAISS's lists each finds.
Centres are unit vectors of bench/scale.py's spectral shape (k-means centres of real embeddings
are not uniform), or with --data a kept library's trained centres (bench/scale.py --keep; its
new-photo queries for --n). --dims P ...: the split again on the centres' first P principal
directions only (float16 halves, the query projected), alone and with the best 1.25 x nprobe
compared again exactly (measured, not taken: docs/BENCHMARKS.md). Appends one JSON line to
bench/out/coarse.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, percentiles, progress, record  # noqa: E402
from scale import Vectors  # noqa: E402

from imgsearch.index.coarse import Coarse  # noqa: E402
from imgsearch.index.reads import one_omp_thread  # noqa: E402


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lists", type=int, default=16_384)
    parser.add_argument("--nprobe", type=int, default=1_329)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--data", type=Path, help="a kept library's data dir: its centres")
    parser.add_argument("--n", type=int, default=10_000_000, help="with --data: its size")
    parser.add_argument("--dims", type=int, nargs="*", default=[], help="principal directions")
    args = parser.parse_args()
    if args.data is not None:
        from tree_dims import centres_of

        centres = np.ascontiguousarray(centres_of(args.data), np.float32)
        args.lists, args.dim = centres.shape
        queries = Vectors(args.n, args.dim, "spectral").queries(args.queries)
    else:
        vectors = Vectors(args.lists, args.dim, "spectral")
        centres = np.ascontiguousarray(np.concatenate(list(vectors.chunks())), np.float32)
        queries = vectors.queries(args.queries)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(centres)
    from threadpoolctl import threadpool_limits  # (scikit-learn's dependency)

    one_omp_thread()  # as a request thread
    threadpool_limits(1, user_api="blas")  # the product's halves: one BLAS thread each
    helper = ThreadPoolExecutor(1, "helper", one_omp_thread)
    junk = np.ones(256 << 17)  # 256 MB

    def one(q: np.ndarray) -> Any:
        return flat.search(q[None], args.nprobe)

    def halves(kind: int | None) -> tuple[Any, Any]:
        cut, made = len(centres) // 2, []
        for part in (centres[:cut], centres[cut:]):
            index = (
                faiss.IndexFlatIP(args.dim)
                if kind is None
                else faiss.IndexScalarQuantizer(args.dim, kind, faiss.METRIC_INNER_PRODUCT)
            )
            index.train(part)
            index.add(part)
            made.append(index)
        return made[0], made[1]

    def split(coarse: Coarse) -> Callable[[np.ndarray], Any]:
        """Two threads: half the centres searched here, half on the helper, merged."""
        return lambda q: coarse.nearest(q[None], args.nprobe, helper)

    two = split(Coarse.float16(centres))
    two_float32 = split(Coarse(*halves(None)))
    two_bfloat16 = split(Coarse(*halves(faiss.ScalarQuantizer.QT_bf16)))
    two_8bit = split(Coarse(*halves(faiss.ScalarQuantizer.QT_8bit)))

    def best_of(q: np.ndarray, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        scores = centres[first:end] @ q  # BLAS, one thread
        top = np.argpartition(-scores, min(args.nprobe, end - first) - 1)[: args.nprobe]
        return scores[top], top + first

    def product(q: np.ndarray) -> Any:
        """Two threads as `two`, each half by BLAS's product and numpy's partition instead of
        FAISS's knn (its heap of nprobe; measured, not taken)."""
        cut = len(centres) // 2
        other = helper.submit(best_of, q, cut, len(centres))
        near, far = best_of(q, 0, cut), other.result()
        sims, lists = np.concatenate([near[0], far[0]]), np.concatenate([near[1], far[1]])
        order = np.argsort(-sims, kind="stable")[: args.nprobe]
        return sims[order][None], lists[order][None]

    def same(way: Callable[[np.ndarray], Any]) -> float:
        checked = queries[: min(50, len(queries))]
        found = [len(np.intersect1d(one(q)[1], way(q)[1])) / args.nprobe for q in checked]
        return float(np.mean(found))

    def reduced(dims: int, again: float) -> Callable[[np.ndarray], Any]:
        """Two threads as `two`, on the centres less their mean in their first `dims` principal
        directions; with `again` > 1 the best again x nprobe compared exactly, nprobe kept."""
        mean = centres.mean(axis=0)
        _, vectors_ = np.linalg.eigh(((centres - mean).T @ (centres - mean)).astype(np.float64))
        turn = np.ascontiguousarray(vectors_[:, ::-1][:, :dims], np.float32)
        coarse = Coarse.float16(np.ascontiguousarray((centres - mean) @ turn))
        wanted = int(again * args.nprobe)

        def way(q: np.ndarray) -> Any:
            lists = coarse.nearest((q @ turn)[None], wanted, helper)[1][0]
            if wanted > args.nprobe:
                lists = lists[np.argpartition(-(centres[lists] @ q), args.nprobe - 1)]
            return None, lists[None, : args.nprobe]

        return way

    ways_reduced = {
        f"{dims} directions{', again' if again > 1 else ''}": reduced(dims, again)
        for dims in args.dims
        for again in (1.0, 1.25)
    }
    result: dict[str, Any] = {
        "bench": "coarse", "cpu": cpu_model(), "load": os.getloadavg(), "lists": args.lists,
        "nprobe": args.nprobe, "dim": args.dim, "same_lists": same(two),
        "same_lists_float32": same(two_float32), "same_lists_product": same(product),
        "same_lists_bfloat16": same(two_bfloat16), "same_lists_8bit": same(two_8bit),
    }  # fmt: skip
    ways: dict[str, Callable[[np.ndarray], Any]] = {
        "one thread": one, "two threads (float16: the daemon's)": two,
        "two threads, float32": two_float32, "two threads, BLAS product": product,
        "two threads, bfloat16": two_bfloat16, "two threads, 8 bits": two_8bit,
        **ways_reduced,
    }  # fmt: skip
    for name, way in ways_reduced.items():
        result[f"same_lists, {name}"] = same(way)
    for cold in (False, True):
        for name, way in ways.items():
            times = []
            for q in queries:
                if cold:
                    junk.sum()
                start = time.perf_counter()
                way(q)
                times.append((time.perf_counter() - start) * 1000)
            key = f"{name}, {'cold' if cold else 'warm'}"
            result[key] = percentiles(times)
            progress(f"{key}: {result[key]}")
    helper.shutdown()
    record(result, "coarse")


if __name__ == "__main__":
    main()
