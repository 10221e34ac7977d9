"""Training an IVF's lists: spherical k-means with the assignment in bfloat16 where the CPU runs
bfloat16 natively (AVX512-BF16 or AMX), FAISS's own float32 k-means elsewhere; from
Policy.two_level_min_lists lists, two-level (`two_level`) instead of ten flat iterations.

The assignment (every sample vector against every centroid, each iteration) is the training's
whole cost: at 10M's former 12,649 lists, 262,144 x 12,649 x 512-d x 10 iterations, ~34 TFLOP.
FAISS runs it as a float32 GEMM; torch (oneDNN) runs it in bfloat16, several times the flops a
second on this project's Zen 4, but returns the scores rounded to bfloat16 (steps of ~0.004
near 0.8: ties, which an argmax gives to the first centre). So each vector's best few
centres by the bfloat16 product are compared again in float32 (assigning.py). Centroids are
float32 means of the float32 sample, normalized each iteration as FAISS's spherical k-means
does for inner-product indexes; a centroid left empty is split from a big one by
`faiss.contrib.clustering.reassign_centroids`, as FAISS's C++ k-means does. bench/kmeans.py
compares the two on the same sample (10M's training: 241.5 -> 199.4 s, 1.21x; 1M's: 1.27x;
the same objective and imbalance); bench/ivf_reach.py --train the recall an index so trained
reaches; bench/import_rate.py --precision the daemon's. The same assignment chooses the
lists of vectors added to a trained index (placing.py). Where the CPU has no AMX, the
iterations into Policy.tree_from lists or more assign through a tree of the centres instead,
where it compares few of them (tree.CentreTree: float32, ~1/6 of the centres compared; 36.7 ->
23.0 s for 10M's two refining iterations on a Zen 4, docs/BENCHMARKS.md; the whole k-means
50 -> 28 s since the tree compares members in the centres' leading directions,
bench/import_rate.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np

from ..cpu import torch_threads
from .assigning import Centres, assigner
from .stopping import check
from .tree import CentreTree

log = logging.getLogger(__name__)

# FAISS's IVF training runs 10 iterations (IndexIVF.cp.niter); so does a flat training here.
ITERATIONS = 10
# A two-level training's coarse clusters are fitted on at most this many rows a cluster (FAISS's
# own k-means subsamples to 256 a centroid, its max_points_per_centroid), then every row is
# assigned to them once: at 10M, 327,680 rows into 128 clusters took 3.6 of the k-means' 19.5 s
# on every row, 0.4 s on the sample (ad hoc on the Zen 4); the whole k-means 1.1x quicker, the
# same lists' quality (bench/kmeans.py --against coarse_every_row, docs/BENCHMARKS.md).
COARSE_ROWS_PER_CLUSTER = 256
# A two-level training's full iterations over every list, after the coarse split (1M into
# 16,000 lists: recall 0.98-0.99 for ~3x less CPU a search than 4,000 lists trained flat, for
# 2.6x their training, where ten flat iterations into 16,000 take 7.6x; docs/BENCHMARKS.md).
REFINE_ITERATIONS = 2
# Rows assigned at a time by a k-means iteration, a stop checked between blocks: at 16,000
# lists of 1280-d, ~2 s on two Zen 4 cores by the bfloat16 product (an iteration: ~40 s).
ASSIGN_ROWS = 16_384
# A `tree_from` that never comes (Policy.tree_from's default).
NEVER = 1 << 62
# A sample whose mean is shorter than this is trained as it is (`_mean`).
MIN_MEAN = 1e-6


def train(
    index: Any,
    sample: np.ndarray,
    bf16: bool,
    seed: int,
    two_level_from: int,
    tree_from: int = NEVER,
    codes: bool = True,
    stop: threading.Event | None = None,
    centred: bool = False,
) -> np.ndarray | None:
    """Train `index` (an index_factory IVF index) on `sample`: its codes unless not `codes`
    (rotation.train sets them), and its coarse lists by `two_level`
    from `two_level_from` lists, else by ten iterations of bfloat16 k-means when `bf16`
    (Policy.train_bf16: the CPU runs bfloat16 natively) or FAISS's float32 one. Iterations
    into at least `tree_from` lists assign rows through a tree of the centres (tree.py).
    `centred`: the lists are those of the sample less its mean, kept in an L2 quantizer
    (`around`; the sample is changed meanwhile and put back). Returns
    each sample row's list as the last iteration assigned it (the centres moved once more
    after it: near-best, not best), or None where FAISS's k-means ran. Raises
    stopping.Stopped soon after `stop` is set (between blocks of ASSIGN_ROWS rows)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    started = time.monotonic()
    split = ivf.nlist >= two_level_from
    assign = None
    mean = _mean(sample) if centred and len(sample) >= ivf.nlist and _flat(ivf) else None
    if mean is not None or (len(sample) >= ivf.nlist and (bf16 or split or ivf.nlist >= tree_from)):
        if mean is None:
            centres, assign = _lists(sample, ivf.nlist, bf16, seed, split, tree_from, stop)
            ivf.quantizer.add(centres)  # a quantizer holding nlist centres: FAISS skips its k-means
        else:
            sample -= mean  # (in place, put back below: the sample is 0.7-1.7 GB at 10M)
            try:
                centres, assign = _lists(sample, ivf.nlist, bf16, seed, split, tree_from, stop)
                l2_lists(ivf, around(centres, sample, assign, mean))
            finally:
                sample += mean
        log.info(
            "k-means (%s%s): %d x %d to %d lists in %.1fs%s", "two-level, " if split else "",
            "tree where worth it" if ivf.nlist >= tree_from else "bf16" if bf16 else "fp32",
            len(sample), ivf.d, ivf.nlist, time.monotonic() - started,
            "" if mean is None else f", centred (a mean of length {np.linalg.norm(mean):.3f})",
        )  # fmt: skip
    if not codes:
        return assign
    index.train(sample)  # the codes (PQ on residuals), and the lists unless done above
    log.info("index trained on %d vectors in %.1fs", len(sample), time.monotonic() - started)
    return assign


def _lists(
    sample: np.ndarray,
    lists: int,
    bf16: bool,
    seed: int,
    split: bool,
    tree_from: int,
    stop: threading.Event | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`train`'s k-means: unit centres and each row's list by the last iteration."""
    import faiss

    # Torch loaded first (the daemon's model) holds the OpenMP runtime FAISS calls, and
    # its first op in a thread sets the thread's team to torch's default (half the
    # cores): FAISS's is put back after, or the adds and tuning that follow run on one.
    faiss_threads = faiss.omp_get_max_threads()
    try:
        with torch_threads(os.cpu_count() or 1):  # as FAISS's k-means: every core
            if split:
                return _two_level(sample, lists, bf16, seed, tree_from=tree_from, stop=stop)
            return _spherical(sample, lists, ITERATIONS, seed, None, tree_from, bf16, stop)
    finally:
        faiss.omp_set_num_threads(faiss_threads)


def _mean(sample: np.ndarray) -> np.ndarray | None:
    """The mean of `sample`'s rows (None where it is all but zero: nothing to centre)."""
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    return mean if float(np.linalg.norm(mean)) > MIN_MEAN else None


def _flat(ivf: Any) -> bool:
    """Whether an IVF index's coarse quantizer is a flat one (not an HNSW graph)."""
    import faiss

    return isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat)


def around(
    centres: np.ndarray, shifted: np.ndarray, assign: np.ndarray | None, mean: np.ndarray
) -> np.ndarray:
    """Centres for rows as they are from the unit `centres` of `shifted` (the rows less
    their `mean`): `mean` plus each one scaled to the median length of the shifted rows'
    projections on their own (by `assign`, else by their nearest). All are then at one
    distance from `mean`, so a row's or a query's L2 distances to them rank the lists as its
    own direction from the mean does, and a row's residual is about as short as from its
    list's mean."""
    import faiss

    if assign is None:
        found = faiss.knn(np.ascontiguousarray(shifted), centres, 1, faiss.METRIC_INNER_PRODUCT)
        assign = found[1][:, 0]
    lengths = np.zeros(len(shifted), np.float32)
    for first in range(0, len(shifted), ASSIGN_ROWS):
        block = slice(first, first + ASSIGN_ROWS)
        lengths[block] = np.einsum("ij,ij->i", shifted[block], centres[assign[block]])
    scale = max(float(np.median(lengths)), MIN_MEAN)
    return np.ascontiguousarray(mean + scale * centres, np.float32)


def l2_lists(ivf: Any, centres: np.ndarray) -> None:
    """Give `ivf` (an IVF index over inner product, its flat quantizer empty or not) a flat
    L2 quantizer holding `centres`: its lists' own order (rows and queries probe by L2)."""
    import faiss

    quantizer: Any = faiss.IndexFlatL2(ivf.d)
    quantizer.add(np.ascontiguousarray(centres, np.float32))
    old = ivf.quantizer
    owned = bool(ivf.own_fields)
    quantizer.this.disown()  # the index deletes it with itself
    ivf.quantizer, ivf.own_fields = quantizer, True
    if owned:
        old.this.acquire()  # (the index owned the old one: Python deletes it now)
    del old


def copy_lists(source: Any, target: Any) -> None:
    """Give the IVF index `target` the trained lists of the IVF index `source` (their
    centres, and an L2 quantizer where `source` has one: a centred training's)."""
    import faiss

    centres = source.quantizer.reconstruct_n(0, source.nlist)
    if source.quantizer.metric_type == faiss.METRIC_L2 and target.metric_type != faiss.METRIC_L2:
        l2_lists(target, centres)
    else:
        target.quantizer.add(centres)


def two_level(
    sample: np.ndarray,
    lists: int,
    bf16: bool,
    seed: int,
    refine: int = REFINE_ITERATIONS,
    tree_from: int = NEVER,
) -> np.ndarray:
    """`lists` unit centroids: k-means into sqrt(lists) clusters (fitted on at most
    COARSE_ROWS_PER_CLUSTER rows a cluster, every row then assigned), each cluster's own
    k-means into lists in proportion to its size (at least one; a cluster with no more members
    than its share keeps them as centres), then `refine` iterations over every list from those
    centres. The shape of FAISS's contrib.clustering.two_level_clustering, which fails when
    a cluster's share rounds to 0 and ends where this refines: the split alone leaves borders
    that queries cross (no better a search than a quarter of the lists trained flat)."""
    return _two_level(sample, lists, bf16, seed, refine, tree_from)[0]


def _two_level(
    sample: np.ndarray,
    lists: int,
    bf16: bool,
    seed: int,
    refine: int = REFINE_ITERATIONS,
    tree_from: int = NEVER,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """two_level's centres, and each row's list by the last refining iteration (None
    without one)."""
    import faiss

    x = np.ascontiguousarray(sample, np.float32)
    if len(x) < lists:
        raise ValueError(f"k-means of {len(x)} vectors into {lists} lists")
    k = max(1, int(np.sqrt(lists)))
    fit = x
    if len(x) > k * COARSE_ROWS_PER_CLUSTER:
        rows = np.random.RandomState(seed).choice(len(x), k * COARSE_ROWS_PER_CLUSTER, False)
        fit = x[np.sort(rows)]
    coarse = _kmeans(fit, k, ITERATIONS, seed, bf16, stop=stop)[0]
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(coarse)
    assign = flat.search(x, 1)[1][:, 0]
    sizes = np.bincount(assign, minlength=len(coarse))
    parts = []
    for c, share in enumerate(_shares(sizes, lists)):
        check(stop)
        members = x[assign == c]
        if len(members) <= share:  # share is 0 only for an empty cluster
            parts.append(members)
        else:
            parts.append(_kmeans(members, int(share), ITERATIONS, seed, bf16)[0])
    centres = _unit(np.vstack(parts))
    if not refine:
        return centres, None
    return _kmeans(x, lists, refine, seed, bf16, centres, tree_from, stop)


def _shares(sizes: np.ndarray, lists: int) -> np.ndarray:
    """Lists per cluster summing to `lists`, in proportion to `sizes` by largest remainders;
    each non-empty cluster at least one and at most its size (len(sample) >= lists)."""
    raw = sizes * lists / sizes.sum()
    share: np.ndarray = np.minimum(np.maximum(np.floor(raw).astype(np.int64), sizes > 0), sizes)
    while (left := lists - int(share.sum())) != 0:
        if left > 0:
            room = np.flatnonzero(share < sizes)
            share[room[np.argsort(share[room] - raw[room], kind="stable")[:left]]] += 1
        else:
            spare = np.flatnonzero(share > 1)
            share[spare[np.argsort(raw[spare] - share[spare], kind="stable")[:-left]]] -= 1
    return share


def _kmeans(
    x: np.ndarray,
    k: int,
    iterations: int,
    seed: int,
    bf16: bool,
    init: np.ndarray | None = None,
    tree_from: int = NEVER,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Spherical k-means: `spherical` in bfloat16 or through a tree from `tree_from` centres,
    else FAISS's float32 one on every point given (no subsampling; few points a centroid is a
    two-level split's normal case, not worth FAISS's warning). With each row's centre by the
    last iteration (_spherical's), None from FAISS's."""
    import faiss

    if bf16 or k >= tree_from:
        return _spherical(x, k, iterations, seed, init, tree_from, bf16, stop)
    check(stop)  # (FAISS's own k-means: the coarse clusters and a split's, seconds at most)
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, spherical=True, seed=seed,
                      verbose=False, max_points_per_centroid=1 << 30)  # fmt: skip
    km.cp.min_points_per_centroid = 1
    km.train(x, init_centroids=init)
    return _unit(np.asarray(km.centroids, np.float32)), None


def spherical(
    sample: np.ndarray,
    k: int,
    iterations: int,
    seed: int,
    init: np.ndarray | None = None,
    tree_from: int = NEVER,
    bf16: bool = True,
) -> np.ndarray:
    """k unit-length centroids of `sample` (float32 rows) by spherical k-means, the assignment
    by inner product in bfloat16 (assigning.Centres; FAISS's float32 search unless `bf16`), or
    from `tree_from` centres through a tree of them where it is worth it (`assigner`); from
    `init` (k rows) if given, else k sample rows."""
    return _spherical(sample, k, iterations, seed, init, tree_from, bf16)[0]


def _spherical(
    sample: np.ndarray,
    k: int,
    iterations: int,
    seed: int,
    init: np.ndarray | None = None,
    tree_from: int = NEVER,
    bf16: bool = True,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """spherical's centroids, and each row's centroid by the last iteration's assignment
    (made before that iteration's update; None for no iteration)."""
    import faiss
    import torch
    from faiss.contrib.clustering import reassign_centroids

    x = np.ascontiguousarray(sample, np.float32)
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means of {n} vectors into {k} lists")
    if init is not None and init.shape != (k, d):
        raise ValueError(f"k-means into {k} lists of {d}-d from {init.shape} centres")
    rs = np.random.RandomState(seed)
    start = x[rs.choice(n, size=k, replace=False)] if init is None else init
    centres = _unit(np.array(start, np.float32))
    rows = torch.from_numpy(x)
    low = None  # the rows in bfloat16, made when a bfloat16 product first needs them
    assign = None
    # A tree of centres until one says it is not worth it (CentreTree.worth): an iteration
    # moves the centres little, so the next one's tree would compare as many of them.
    tree = k >= tree_from
    for _ in range(iterations):
        # (a tree on this team: the CPU is the training's)
        made = assigner(centres, bf16, tree, seed, group_threads=None)
        tree = tree and isinstance(made, CentreTree)
        if low is None and isinstance(made, Centres) and not made.float32:
            low = rows.to(torch.bfloat16)
        parts = []
        for first in range(0, n, ASSIGN_ROWS):
            check(stop)
            block = slice(first, first + ASSIGN_ROWS)
            if made is None:  # FAISS's float32 search
                found = faiss.knn(x[block], centres, 1, faiss.METRIC_INNER_PRODUCT)[1][:, 0]
                parts.append(torch.from_numpy(found))
            else:
                parts.append(made.assign(rows[block], (rows if low is None else low)[block]))
        assign = torch.cat(parts)
        sums = torch.zeros((k, d), dtype=torch.float32).index_add_(0, assign, rows).numpy()
        counts = np.bincount(assign.numpy(), minlength=k)  # an empty list splits a big one:
        centres = sums / np.maximum(counts, 1)[:, None].astype(np.float32)
        reassign_centroids(counts, centres, rs)  # type: ignore[no-untyped-call]  # in place
        centres = _unit(centres)
    return centres, None if assign is None else assign.numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), np.float32)
