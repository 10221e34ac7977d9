"""A lone search's coarse assignment: its nearest lists among an IVF base's centres.

A search first compares its query with every list's centre (a flat scan: 16,384 x 512 floats,
32 MB, at 10M; 16,000 x 1,280, 82 MB, at 1M 1280-d) and keeps the nprobe nearest. The scan of
the probed lists that follows reads tens of MB, so the centres are met cold: the comparison is
bound by the bytes it reads. `Coarse` keeps a copy of them as float16 (FAISS's scalar quantizer,
half the bytes) in two halves, compared on two threads (FAISS lets the GIL go). At 16,384 x 512,
caches cold, 1.39 -> 1.14 ms p50; at 16,000 x 1,280, 2.74 -> 1.78 ms (`bench/coarse.py`). The
lists found are float32's but for near-ties at the nprobe-th place (0.9999 of them the same);
their similarities are within 1e-3 of float32's, which the 4-bit codes scanned next round far
more.

A centred base's quantizer compares by L2 (kmeans.around: its centres all at one distance from
the rows' mean, so L2 ranks the lists by a query's direction from the mean): FAISS hands a
list's similarity to the scan of its codes, which adds it to their scores where the codes are
of residuals (an inner product with the centre, by_residual), so the L2 distances found are
turned into the query's inner products with the centres (`inner`) before any scan: a search
of such a base is always assigned here (segments.py), never by FAISS's own `search`.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np


def centres(index: Any) -> np.ndarray | None:
    """A view of an IVF index's list centres (lists x dim float32, its own memory: valid while
    the index lives), from its flat coarse quantizer or an HNSW one's storage; None for an
    exact index, one whose centres are not stored flat or not compared by inner product
    (but a centred index's, by L2), or fewer than two lists (nothing to split)."""
    import faiss

    quantizer = _quantizer(index)
    if quantizer is None or not isinstance(quantizer, faiss.IndexFlat) or quantizer.ntotal < 2:
        return None
    if quantizer.metric_type != faiss.METRIC_INNER_PRODUCT and not centred(index):
        return None
    flat = faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d)
    return np.asarray(flat).reshape(quantizer.ntotal, quantizer.d)


def centred(index: Any) -> bool:
    """Whether an IVF index over inner product probes its lists by L2 (a centred training's,
    kmeans.around)."""
    import faiss

    quantizer = _quantizer(index)
    if quantizer is None or quantizer.metric_type != faiss.METRIC_L2:
        return False
    return bool(faiss.extract_index_ivf(index).metric_type == faiss.METRIC_INNER_PRODUCT)


def centre_norms(index: Any) -> np.ndarray | None:
    """The squared lengths of a centred IVF index's list centres (`inner` needs them); None
    for any other index, whose coarse similarities are inner products already."""
    if not centred(index):
        return None
    quantizer = _quantizer(index)
    found = centres(index)
    if found is None:  # (one list)
        found = quantizer.reconstruct_n(0, quantizer.ntotal)  # type: ignore[union-attr]
    norms: np.ndarray = np.einsum("ij,ij->i", found, found).astype(np.float32)
    return norms


def inner(
    queries: np.ndarray, lists: np.ndarray, dist: np.ndarray, norms: np.ndarray | None
) -> np.ndarray:
    """`dist`, the L2 distances of `queries` to the centres of `lists` (-1: none), as their
    inner products, (|q|^2 + |c|^2 - d) / 2, where `norms` (centre_norms) are given; else
    `dist` as it is (inner products already)."""
    if norms is None:
        return dist
    lengths = np.einsum("ij,ij->i", queries, queries)[:, None]
    out = (lengths + norms[np.maximum(lists, 0)] - dist) / 2
    return np.where(lists >= 0, out, -np.inf).astype(np.float32)


def _quantizer(index: Any) -> Any | None:
    """An IVF index's coarse quantizer (an HNSW one's flat storage), None for another index."""
    import faiss

    try:
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    except RuntimeError:
        return None
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer = faiss.downcast_index(quantizer.storage)
    return quantizer


class Coarse:
    """An IVF base's list centres in two halves (FAISS flat indexes searched as the base's
    quantizer compares, by inner product or L2: the first half's list numbers, then the
    second's), for a split coarse assignment."""

    def __init__(self, near: Any, far: Any) -> None:
        import faiss

        self.halves = (near, far)
        self.cut = int(near.ntotal)
        self.count = self.cut + int(far.ntotal)
        self.l2 = near.metric_type == faiss.METRIC_L2  # (nearest first: the least distances)

    @classmethod
    def float16(cls, centres: np.ndarray, l2: bool = False) -> Coarse:
        """`centres` held as float16, in halves, compared by L2 where `l2`."""
        cut = len(centres) // 2
        return cls(_half(centres[:cut], l2), _half(centres[cut:], l2))

    @classmethod
    def of(cls, index: Any) -> Coarse | None:
        """Float16 halves of an index whose centres `centres` finds; else None."""
        found = centres(index)
        return None if found is None else cls.float16(found, centred(index))

    def nearest(
        self, queries: np.ndarray, nprobe: int, helper: Executor
    ) -> tuple[np.ndarray, np.ndarray]:
        """The nprobe nearest lists of each query (similarities or L2 distances as the base's
        quantizer gives them, list numbers; best first), the first half of the centres
        compared here, the second on `helper`."""
        near, far = self.halves
        other = helper.submit(far.search, queries, min(nprobe, self.count - self.cut))
        mine = near.search(queries, min(nprobe, self.cut))
        theirs = other.result()
        sims = np.concatenate([mine[0], theirs[0]], axis=1)
        lists = np.concatenate([mine[1], theirs[1] + self.cut], axis=1)
        order = np.argsort(sims if self.l2 else -sims, axis=1, kind="stable")[:, :nprobe]
        return np.take_along_axis(sims, order, axis=1), np.take_along_axis(lists, order, axis=1)


def _half(centres: np.ndarray, l2: bool) -> Any:
    """Centres in a flat FAISS index of float16 codes, compared by inner product or `l2`."""
    import faiss

    metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
    sq = faiss.IndexScalarQuantizer(centres.shape[1], faiss.ScalarQuantizer.QT_fp16, metric)
    sq.add(np.ascontiguousarray(centres, dtype=np.float32))  # (float16 needs no training)
    return sq
