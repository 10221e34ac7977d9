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
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np


def centres(index: Any) -> np.ndarray | None:
    """A view of an IVF index's list centres (lists x dim float32, its own memory: valid while
    the index lives), from its flat coarse quantizer or an HNSW one's storage; None for an
    exact index, one whose centres are not stored flat or not compared by inner product, or
    fewer than two lists (nothing to split)."""
    import faiss

    try:
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    except RuntimeError:
        return None
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer = faiss.downcast_index(quantizer.storage)
    inner = quantizer.metric_type == faiss.METRIC_INNER_PRODUCT  # (the lists' own order)
    if not isinstance(quantizer, faiss.IndexFlat) or not inner or quantizer.ntotal < 2:
        return None
    flat = faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d)
    return np.asarray(flat).reshape(quantizer.ntotal, quantizer.d)


class Coarse:
    """An IVF base's list centres in two halves (FAISS flat indexes searched by inner product:
    the first half's list numbers, then the second's), for a split coarse assignment."""

    def __init__(self, near: Any, far: Any) -> None:
        self.halves = (near, far)
        self.cut = int(near.ntotal)
        self.count = self.cut + int(far.ntotal)

    @classmethod
    def float16(cls, centres: np.ndarray) -> Coarse:
        """`centres` held as float16, in halves."""
        cut = len(centres) // 2
        return cls(_half(centres[:cut]), _half(centres[cut:]))

    @classmethod
    def of(cls, index: Any) -> Coarse | None:
        """Float16 halves of an index whose centres `centres` finds; else None."""
        found = centres(index)
        return None if found is None else cls.float16(found)

    def nearest(
        self, queries: np.ndarray, nprobe: int, helper: Executor
    ) -> tuple[np.ndarray, np.ndarray]:
        """The nprobe nearest lists of each query (similarities, list numbers; best first),
        the first half of the centres compared here, the second on `helper`."""
        near, far = self.halves
        other = helper.submit(far.search, queries, min(nprobe, self.count - self.cut))
        mine = near.search(queries, min(nprobe, self.cut))
        theirs = other.result()
        sims = np.concatenate([mine[0], theirs[0]], axis=1)
        lists = np.concatenate([mine[1], theirs[1] + self.cut], axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :nprobe]
        return np.take_along_axis(sims, order, axis=1), np.take_along_axis(lists, order, axis=1)


def _half(centres: np.ndarray) -> Any:
    """Centres in a flat FAISS index of float16 codes, compared by inner product."""
    import faiss

    sq = faiss.IndexScalarQuantizer(
        centres.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    sq.add(np.ascontiguousarray(centres, dtype=np.float32))  # (float16 needs no training)
    return sq
