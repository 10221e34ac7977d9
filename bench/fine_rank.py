"""Which codes rank an IVF search's candidates well enough to read only a few from the store.

    python bench/fine_rank.py --n 1000000 --dist spectral
    python bench/fine_rank.py --n 1000000 --dist clustered --quantizers "SQ4;PCA256,SQ8"
    python bench/fine_rank.py --quantizers SQ4 --pq 256 128 64 --depth 300 --kept 40 100 \
        --pools 1000 3000
    python bench/fine_rank.py --quantizers SQ4 --kept 40 100 --codes RaBitQfs RaBitQfs4

Regenerates bench/scale.py's vectors (float16 as stored), builds the policy's index for N
(bench/ivf_reach.py's `build`), and for each nprobe takes each new-photo query's `--depth` x 10
candidates from the fast-scan codes. It reports recall@10 against exact search when the
candidates are re-scored with exact vectors: all of them, or only the first 100 / 200 as the
IVF ranks them (what a shallower re-scoring reads), or the best 20 / 40 / 80 as ranked by each
quantizer of `--quantizers` (FAISS index_factory strings, trained on 65,536 stored vectors,
every vector encoded): the daemon's fine codes (imgsearch/index/fine.py) are "SQ4". `--pq`
builds the index once per fast-scan code size (4-bit sub-quantizers; 0: the policy's);
`--codes` adds, for each index, the same lists with other codes (a FAISS factory suffix such
as RaBitQfs: 1-bit RaBitQ scanned fast, or RaBitQfs4), the same rows measured. Per
quantizer: training seconds, encoding us a row (2 threads), code bytes, and the median ms to
rank one query's candidates (on the codes as the daemon does for SQ4, else decoded; dot
products, sort) on one thread. Appends one JSON line to bench/out/fine_rank.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from ivf_reach import DIM, K, build, scan, stored, truth  # noqa: E402
from scale import DISTRIBUTIONS, Vectors  # noqa: E402

from imgsearch.index.fine import FACTORY, scales_of, scores  # noqa: E402

TRAIN = 65_536


def hits(found: list[np.ndarray], want: np.ndarray) -> float:
    got = sum(len(np.intersect1d(f[f >= 0], w)) for f, w in zip(found, want, strict=True))
    return got / (K * len(want))


def exact_best(x: np.ndarray, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return ids[np.argsort(-(x[ids] @ q))[:K]]


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="spectral")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--depth", type=int, default=100, help="candidates: depth x 10")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[256, 512, 1024, 2048])
    parser.add_argument("--quantizers", default="SQ4;PQ64;PCA128,SQ8")
    parser.add_argument("--pq", type=int, nargs="*", default=[0], help="fast-scan sizes")
    parser.add_argument(
        "--codes", nargs="*", default=[],
        help="also other codes on the same lists (FAISS factory suffixes: RaBitQfs, RaBitQfs4)",
    )  # fmt: skip
    parser.add_argument("--kept", type=int, nargs="*", default=[20, 40, 80])
    parser.add_argument(
        "--pools", type=int, nargs="*", default=[],
        help="also rank only the IVF's first P candidates by the fine codes (default: all)",
    )  # fmt: skip
    args = parser.parse_args()
    vectors = Vectors(args.n, DIM, args.dist)
    queries = vectors.queries(args.queries)
    result: dict[str, Any] = {
        "bench": "fine_rank", "cpu": cpu_model(), "load": os.getloadavg(), "n": args.n,
        "dist": args.dist, "depth": args.depth,
    }  # fmt: skip
    progress(f"regenerating {args.n:,} vectors")
    x = stored(vectors)
    want = truth(x, queries)
    rng = np.random.default_rng(1)
    sample = x[np.sort(rng.choice(len(x), min(TRAIN, len(x)), replace=False))]
    faiss.omp_set_num_threads(2)
    coders: dict[str, tuple[Any, np.ndarray]] = {}
    result["quantizers"] = {}
    for name in args.quantizers.split(";"):
        start = time.perf_counter()
        quantizer = faiss.index_factory(DIM, name, faiss.METRIC_INNER_PRODUCT)
        quantizer.train(sample)
        trained = time.perf_counter() - start
        codes = quantizer.sa_encode(x)
        encode_us = (time.perf_counter() - start - trained) * 1e6 / len(x)
        about = {"train_s": trained, "encode_us": encode_us, "bytes": quantizer.sa_code_size()}
        progress(f"{name}: {about}")
        result["quantizers"][name] = about
        coders[name] = (quantizer, codes)
    result["indexes"] = []
    for pq in args.pq:
        progress(f"building the policy's index (fast-scan sub-quantizers: {pq or 'policy'})")
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index, built = build(x, "policy", pq=pq)
        faiss.omp_set_num_threads(1)  # as the daemon searches: one thread a query
        built["rows"] = rows(args, index, x, queries, want, coders)
        result["indexes"].append(built)
        for codes in args.codes:
            progress(f"the same lists with {codes} codes")
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            other, about = same_lists(index, x, sample, codes)
            faiss.omp_set_num_threads(1)
            about["rows"] = rows(args, other, x, queries, want, coders)
            result["indexes"].append(about)
            del other
        del index
    record(result, "fine_rank")


def same_lists(
    index: Any, x: np.ndarray, sample: np.ndarray, codes: str
) -> tuple[Any, dict[str, Any]]:
    """An IVF index over `index`'s lists (its centroids, a flat quantizer) with other codes,
    trained on `sample` and filled with `x`."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    factory = f"IVF{ivf.nlist},{codes}"
    other = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    lists = faiss.extract_index_ivf(other)
    lists.quantizer.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    start = time.perf_counter()
    other.train(sample)  # the codes' own training; the lists are given
    other.add(x)
    return other, {"factory": factory, "build_s": time.perf_counter() - start}


def rows(
    args: argparse.Namespace, index: Any, x: np.ndarray, queries: np.ndarray,
    want: np.ndarray, coders: dict[str, tuple[Any, np.ndarray]],
) -> list[dict[str, Any]]:  # fmt: skip
    """One row an nprobe: recall@10 of each way of choosing what is re-scored."""
    out = []
    scales = {name: scales_of(c[0]) if name == FACTORY else None for name, c in coders.items()}
    for nprobe in args.nprobe:
        candidates, codes_seen, cpu = scan(index, queries, nprobe, args.depth)
        lists = [c[c >= 0] for c in candidates]
        row: dict[str, Any] = {"nprobe": nprobe, "codes": codes_seen, "scan_ms": cpu}
        pairs = list(zip(queries, lists, strict=True))
        row["exact_all"] = hits([exact_best(x, q, c) for q, c in pairs], want)
        for first in (100, 200):
            best = [exact_best(x, q, c[:first]) for q, c in pairs]
            row[f"exact_first_{first}"] = hits(best, want)
        for name, (quantizer, codes) in coders.items():
            for pool in args.pools or [args.depth * K]:
                at = "" if pool == args.depth * K else f"/{pool}"
                ranked, spent = [], []
                for q, c in pairs:
                    start = time.perf_counter()
                    c = c[:pool]
                    ranked.append(c[np.argsort(-scores(quantizer, scales[name], codes[c], q))])
                    spent.append(time.perf_counter() - start)
                for kept in args.kept:
                    best = [
                        exact_best(x, q, r[:kept]) for q, r in zip(queries, ranked, strict=True)
                    ]
                    row[f"{name}@{kept}{at}"] = hits(best, want)
                row[f"{name}_rank_ms{at}"] = float(np.median(spent) * 1000)
        progress(" ".join(f"{k} {v:.4g}" for k, v in row.items()))
        out.append(row)
    return out


if __name__ == "__main__":
    main()
