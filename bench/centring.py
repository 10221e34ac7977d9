"""Would the coarse lists be better trained on rows with the library's mean direction taken out?

    python bench/centring.py --dist clustered --variants plain centred --nprobe 32 64 128 256 512
    python bench/centring.py --dist clustered --variants centred --nprobe 1024 2048 4096

bench/scale.py's cached 1M shards (`--shards-only` writes them), 16,000 lists as the policy
makes them for 1M (kmeans.train: two-level, float32, on the policy's sample), FAISS's
IVF-Flat over inner product, so the partition alone is measured (no codes). `plain`: the rows
as stored, as the daemon trains today. `centred`: every row and query minus the mean of the
training sample, scaled to unit length, before the lists are trained, filled and probed (a
query's ranking of rows is unchanged by the shift: x . (y - m) = x . y - x . m). `shifted`:
the rows minus that mean, not rescaled, and the queries as they are: the lists trained (by
spherical k-means: rows assigned by direction) and filled with the shifted rows, probed by the
query's inner product with their centres, and every probed row scored exactly (a query's
ranking is unchanged: only the rows moved). `routed`: those lists, probed by the query minus
the mean (scored as it is). `l2`: as the daemon trains them (kmeans.train, centred): the
`routed` lists, their centres the mean plus each list's direction at one length, in an L2
quantizer, so FAISS's own probing of the rows and queries as they are ranks them as `routed`
does. `means`: those lists' centres moved to the means of all the rows they hold (an L2
Voronoi partition; the daemon tried the means of its training sample's rows, which let new
photos find 0.9605 of their true top 10 at the nprobe tuned for 0.98 on stored vectors).
`projected`: the lists trained on the rows with their component
along the mean's direction taken out, their centres then that direction's mean length along it
plus their own direction scaled (all of one length): FAISS's own inner-product probing of the
rows and queries as they are then ranks the lists by the query's projected direction. For each
--nprobe, bench/scale.py's 200 new-photo queries one at a time: the share of the codes
compared (FAISS's `indexIVF_stats.ndis`) and recall@10 against exact search once the 100
candidates are re-scored with the stored vectors. Prints the lists' imbalance factor; appends
one JSON line to bench/out/centring.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, cpu_model, progress, record, shard_vectors  # noqa: E402
from scale import DISTRIBUTIONS, Vectors  # noqa: E402

from imgsearch.index import kmeans  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402

N, DIM, LISTS, K, CANDIDATES = 1_000_000, 512, 16_000, 10, 100
VARIANTS = ("plain", "centred", "shifted", "routed", "projected", "l2", "means")


def unit(a: np.ndarray) -> np.ndarray:
    return np.asarray(a / np.linalg.norm(a, axis=1, keepdims=True), np.float32)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=["plain"],
    )
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    x = shard_vectors(OUT_DIR / f"scale-shards-open_clip_ViT-B-32_random-{args.dist}-{N}", N, DIM)
    queries = Vectors(N, DIM, args.dist).queries(200)
    truth = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(N, P.train_size(LISTS, N), replace=False))
    mean = x[sample].mean(axis=0)
    out: dict[str, Any] = {"cpu": cpu_model(), "dist": args.dist, "lists": LISTS, "runs": {}}
    built: tuple[str, Any, dict[str, Any]] | None = None  # (rows' kind, index, its figures)
    for variant in args.variants:
        kind = "shifted" if variant == "routed" else variant  # the same lists, other probing
        if built is None or built[0] != kind:
            built = None  # (one index in memory at a time)
            built = (kind, *build(x, mean, kind, sample))
        _, index, made = built
        run: dict[str, Any] = dict(made)
        ivf = faiss.extract_index_ivf(index)
        asked = unit(queries - mean) if variant == "centred" else queries
        routing = queries - mean if variant == "routed" else None  # probed by q - m
        faiss.omp_set_num_threads(1)  # as the daemon searches
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            faiss.cvar.indexIVF_stats.reset()
            found = probe(index, asked, routing, nprobe)
            codes = faiss.cvar.indexIVF_stats.ndis / len(asked) / N
            hits = 0
            for q, f, want in zip(queries, found, truth, strict=True):
                f = f[f >= 0]
                hits += len(np.intersect1d(f[np.argsort(-(x[f] @ q))[:K]], want))
            recall = hits / truth.size
            run[f"nprobe {nprobe}"] = {"codes_share": codes, "recall_at_10": recall}
            progress(f"  nprobe {nprobe}: {codes:.3f} of the codes, recall@10 {recall:.4f}")
        faiss.omp_set_num_threads(2)
        out["runs"][variant] = run
    record({"bench": "centring", **out}, "centring")


def probe(index: Any, asked: np.ndarray, routing: np.ndarray | None, nprobe: int) -> np.ndarray:
    """The CANDIDATES best rows for each query of `asked`, the lists probed chosen by the
    queries themselves or by `routing` (other queries, a row each)."""
    if routing is None:
        return np.asarray(index.search(asked, CANDIDATES)[1])
    import faiss

    ivf = faiss.extract_index_ivf(index)
    dist, lists = ivf.quantizer.search(routing, nprobe)
    return np.asarray(ivf.search_preassigned(asked, CANDIDATES, lists, dist)[1])


def build(x: np.ndarray, mean: np.ndarray, kind: str, sample: np.ndarray) -> tuple[Any, dict]:
    """IVF-Flat lists trained on and filled with the rows as `kind` moves them."""
    import faiss

    started = time.monotonic()
    rows = x if kind in ("plain", "projected", "l2", "means") else x - mean
    rows = unit(rows) if kind == "centred" else rows
    index = faiss.index_factory(DIM, f"IVF{LISTS},Flat", faiss.METRIC_INNER_PRODUCT)
    train = np.ascontiguousarray(rows[sample])
    axis = mean / np.linalg.norm(mean)
    if kind == "projected":
        train -= np.outer(train @ axis, axis)
    centred = kind in ("l2", "means")
    assign = kmeans.train(
        index, train, False, P.SEED, P.TWO_LEVEL_MIN_LISTS, codes=False, centred=centred
    )
    if kind == "projected":
        quantizer = faiss.extract_index_ivf(index).quantizer
        c = quantizer.reconstruct_n(0, LISTS)
        c = unit(c - np.outer(c @ axis, axis))
        scale = float(np.median(np.sum(train * c[assign], axis=1))) if assign is not None else 0.5
        quantizer.reset()
        quantizer.add(np.ascontiguousarray(scale * c + np.linalg.norm(mean) * axis, np.float32))
    if kind == "means":  # each list's centre: the mean of the rows it holds
        quantizer = faiss.extract_index_ivf(index).quantizer
        lists = np.concatenate([
            quantizer.search(x[first : first + 100_000], 1)[1][:, 0]
            for first in range(0, len(x), 100_000)
        ])  # fmt: skip
        sums = np.zeros((LISTS, DIM), np.float64)
        np.add.at(sums, lists, x)
        counts = np.maximum(np.bincount(lists, minlength=LISTS), 1)[:, None]
        quantizer.reset()
        quantizer.add(np.ascontiguousarray(sums / counts, np.float32))
    index.is_trained = True  # (IVF-Flat: no codes to train)
    index.add(rows)
    ivf = faiss.extract_index_ivf(index)
    made = {"imbalance": float(ivf.invlists.imbalance_factor())}
    made["built_s"] = time.monotonic() - started
    progress(f"{kind}: built in {made['built_s']:.0f}s, imbalance {made['imbalance']:.2f}")
    return index, made


if __name__ == "__main__":
    main()
