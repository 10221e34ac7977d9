"""Close pairs in a set of unit vectors: each vector's k nearest within a distance. No HTTP.

Up to EXACT_MAX vectors the pass is exact (brute-force k-NN, BLAS). Beyond, all pairs cost
n^2 * d (100k x 512-d is ~10^13 flops: about a minute on 2 cores), so vectors are split into
k-means cells (CELLS * sqrt(n) of them, trained on a sample) and each vector is compared with
the members of its NPROBE nearest cells, one BLAS block per cell: an IVF search batched by
cell. On 100k synthetic vectors (bench/duplicates.py) it was 5-10x faster than the exact pass
and found 99.95-100% of planted near-duplicate pairs (98.4% with no structure at all).
Distances are 1 - cosine, as in search results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

NEIGHBOURS = 10  # partners looked for per vector (self excluded)
EXACT_MAX = 10_000
# IVF: CELLS * sqrt(n) cells, trained on TRAIN_PER_CELL points each (faiss wants >= 39).
CELLS = 5.0
TRAIN_PER_CELL = 20
KMEANS_ITERATIONS = 4
NPROBE = 8
QUERY_CHUNK = 8192  # queries per faiss call (bounds the temporary distance blocks)
BLOCK_ROWS = 4096  # queries per BLAS block of a cell (bounds memory in cells many probe)
# Candidates (query, member, similarity) gathered from cells before they are merged into each
# vector's best k: memory stays at n x k plus this many, however many pairs pass the threshold
# (all of them kept until the end took ~7 KB an image in a library of look-alikes).
MERGE_EVERY = 1 << 21
SEED = 1234


@dataclass(frozen=True)
class ClosePairs:
    """Row pairs (first < second) within the distance, closest first."""

    first: np.ndarray  # int64 row indexes into the vectors
    second: np.ndarray
    distance: np.ndarray  # float32, 1 - cosine
    method: str  # "exact" or "ivf"

    def __len__(self) -> int:
        return int(self.first.shape[0])


def choose_method(count: int) -> str:
    return "exact" if count <= EXACT_MAX else "ivf"


def close_pairs(
    vectors: np.ndarray,
    threshold: float,
    *,
    k: int = NEIGHBOURS,
    method: str | None = None,
    check: Callable[[], None] = lambda: None,
) -> ClosePairs:
    """Each vector's `k` nearest others at distance <= `threshold`, as unique pairs.
    `check()` is called between blocks of work: raising there abandons the pass."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    method = method or choose_method(len(x))
    if len(x) < 2:
        empty = np.zeros(0, np.int64)
        return ClosePairs(empty, empty, np.zeros(0, np.float32), method)
    wanted = min(k + 1, len(x))  # each vector finds itself too
    if method == "exact":
        sims, ids = _exact(x, wanted, check)
    elif method == "ivf":
        sims, ids = _ivf(x, wanted, threshold, check)
    else:
        raise ValueError(f"unknown method {method!r}")
    return _pairs(sims, ids, threshold, method)


def _exact(x: np.ndarray, k: int, check: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    sims = np.empty((len(x), k), np.float32)
    ids = np.empty((len(x), k), np.int64)
    for start in range(0, len(x), QUERY_CHUNK):
        check()
        end = start + QUERY_CHUNK
        sims[start:end], ids[start:end] = faiss.knn(
            x[start:end], x, k, metric=faiss.METRIC_INNER_PRODUCT
        )
    return sims, ids


def _ivf(
    x: np.ndarray, k: int, threshold: float, check: Callable[[], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours through k-means cells: each vector meets the members of its NPROBE nearest
    cells, one BLAS block per cell (an IVF search batched by cell, so blocks stay in cache)."""
    import faiss

    n, dim = x.shape
    cells = max(1, min(round(CELLS * math.sqrt(n)), n // TRAIN_PER_CELL))
    rng = np.random.default_rng(SEED)
    sample = x[np.sort(rng.choice(n, min(n, TRAIN_PER_CELL * cells), replace=False))]
    kmeans = faiss.Kmeans(
        dim,
        cells,
        niter=KMEANS_ITERATIONS,
        spherical=True,
        seed=SEED,
        min_points_per_centroid=TRAIN_PER_CELL,
    )
    kmeans.train(sample)
    probe = min(NPROBE, cells)
    centroids = np.asarray(kmeans.centroids, dtype=np.float32)
    _, probes = faiss.knn(x, centroids, probe, metric=faiss.METRIC_INNER_PRODUCT)
    members = _grouped(probes[:, 0], np.arange(n), cells)  # each vector lives in its nearest
    queries = _grouped(probes.ravel(), np.repeat(np.arange(n), probe), cells)
    cut = np.float32(1.0 - threshold)
    best = (np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    held = 0
    for cell in range(cells):
        if not len(members[cell]):  # a centroid k-means left empty (a tight group took two)
            continue
        check()
        inside = x[members[cell]]
        for start in range(0, len(queries[cell]), BLOCK_ROWS):  # a hub cell, probed by many
            part = queries[cell][start : start + BLOCK_ROWS]
            found.append(_block(x[part] @ inside.T, part, members[cell], cut, k))
            held += len(found[-1][0])
            if held >= MERGE_EVERY:
                _merge(best, found, k)
                found, held = [], 0
    _merge(best, found, k)
    log.debug("IVF candidate pass: %d vectors, %d cells, %d probed", n, cells, probe)
    return best


def _grouped(cells: np.ndarray, rows: np.ndarray, count: int) -> list[np.ndarray]:
    """`rows` split by their cell."""
    order = np.argsort(cells, kind="stable")
    bounds = np.searchsorted(cells[order], np.arange(count + 1))
    return np.split(rows[order], bounds[1:-1])


def _block(
    sims: np.ndarray, queries: np.ndarray, members: np.ndarray, cut: np.float32, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query, member, similarity) of one block at similarity >= cut, at most k a query."""
    hits = np.flatnonzero(sims.max(axis=1) >= cut)  # most rows have no partner at all
    queries, sims = queries[hits], sims[hits]
    if len(members) > k and np.count_nonzero(sims >= cut) > k * len(queries):
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # a dense cell: the k best a row
        picked = np.take_along_axis(sims, top, axis=1)
        r, c = np.nonzero(picked >= cut)
        return queries[r], members[top[r, c]], picked[r, c]
    r, c = np.nonzero(sims >= cut)
    return queries[r], members[c], sims[r, c]


def _merge(
    best: tuple[np.ndarray, np.ndarray],
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    k: int,
) -> None:
    """Fold candidates (query, member, similarity) into each query's best k (n x k
    similarities and ids, best first, -1 padded: as a k-NN search answers), in place. A pair
    comes from one cell only (a member lives in one), so none is counted twice."""
    if not found:
        return
    new_rows, new_cols, new_sims = (np.concatenate(parts) for parts in zip(*found, strict=True))
    if not len(new_rows):
        return
    sims, ids = best
    touched = np.unique(new_rows)
    old_ids = ids[touched].ravel()
    had = old_ids >= 0
    rows = np.concatenate([np.repeat(touched, k)[had], new_rows])
    cols = np.concatenate([old_ids[had], new_cols])
    scores = np.concatenate([sims[touched].ravel()[had], new_sims])
    order = np.lexsort((cols, -scores, rows))
    rows, cols, scores = rows[order], cols[order], scores[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    keep = rank < k
    sims[touched], ids[touched] = -np.inf, -1
    sims[rows[keep], rank[keep]] = scores[keep]
    ids[rows[keep], rank[keep]] = cols[keep]


def _pairs(sims: np.ndarray, ids: np.ndarray, threshold: float, method: str) -> ClosePairs:
    rows = np.repeat(np.arange(len(ids), dtype=np.int64), ids.shape[1])
    cols = ids.ravel()
    sim = sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (sim >= np.float32(1.0 - threshold))
    first = np.minimum(rows, cols)[keep]
    second = np.maximum(rows, cols)[keep]
    distance = np.maximum(np.float32(0.0), np.float32(1.0) - sim[keep])
    # Both directions of a pair may be found: keep one; then closest first, ties by rows.
    _, unique = np.unique(first * len(ids) + second, return_index=True)
    order = unique[np.lexsort((second[unique], first[unique], distance[unique]))]
    return ClosePairs(first[order], second[order], distance[order].astype(np.float32), method)
