"""The searchable state: an immutable base, deletions filtered at search time, recent adds.

Removing an id only sets its bit in a bitmap over the base's ids (O(1) an id, whatever the
library's size); the bitmap is an `IDSelectorBitmap` that FAISS applies inside the base search,
together with an optional allow-list, so `k` results still come back. New and changed vectors
go to a small exact segment (IndexIDMap2 on IndexFlatIP). Compaction folds both into a new base.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import policy as P
from .base import Base

# Exact vectors of stored ids (present ones only), from the store: (ids, n x dim float32).
Fetch = Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]]


class Segments:
    """Base + tombstones + recent segment. Writes hold `lock`; base searches need no lock."""

    def __init__(self, base: Base, lock: threading.Lock) -> None:
        import faiss

        self.base = base
        self.lock = lock
        top = int(base.ids[-1]) if len(base.ids) else -1
        self.bitmap = np.zeros((top >> 3) + 1, dtype=np.uint8)
        self.dead = 0
        self.recent: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(base.meta.dim))
        # The recent segment's ids: removing from it rebuilds its id map (O(its size)), so
        # only ids that are there are removed (a new id, a base id: nothing to do).
        self.recent_ids: set[int] = set()

    def __len__(self) -> int:
        return len(self.base) - self.dead + int(self.recent.ntotal)

    # -- writes (callers hold `lock`) -----------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.remove(ids)
        self.recent.add_with_ids(vectors, ids)
        self.recent_ids.update(ids.tolist())

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        if not len(ids):
            return
        inside = ids[self.base.contains(ids)]
        if len(inside):
            byte, bit = inside >> 3, (inside & 7).astype(np.uint8)
            fresh = (self.bitmap[byte] >> bit) & 1 == 0
            self.dead += len(np.unique(inside[fresh]))
            np.bitwise_or.at(self.bitmap, byte, np.left_shift(1, bit).astype(np.uint8))
        there = np.fromiter((i for i in ids.tolist() if i in self.recent_ids), dtype=np.int64)
        if len(there):
            self.recent.remove_ids(faiss.IDSelectorBatch(len(there), faiss.swig_ptr(there)))
            self.recent_ids.difference_update(there.tolist())

    # -- reads ----------------------------------------------------------------------------------

    def deleted(self) -> np.ndarray:
        """Base ids filtered out by the bitmap."""
        if not self.dead:
            return np.zeros(0, np.int64)
        bits = np.unpackbits(self.bitmap, bitorder="little")
        ids = np.asarray(self.base.ids)
        dead: np.ndarray = ids[bits[ids] == 1]
        return dead

    def recent_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the recent segment's ids and vectors (callers hold `lock`)."""
        import faiss

        n = int(self.recent.ntotal)
        ids = faiss.vector_to_array(self.recent.id_map).astype(np.int64)
        vectors = self.recent.index.reconstruct_n(0, n) if n else np.zeros((0, self.base.meta.dim))
        return ids, np.asarray(vectors, dtype=np.float32)

    def ids(self) -> np.ndarray:
        with self.lock:
            recent, _ = self.recent_vectors()
            alive = np.setdiff1d(self.base.ids, self.deleted(), assume_unique=True)
        return np.union1d(alive, recent)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k of base and recent segment: (similarities, ids), -1 padded."""
        import faiss

        keep: list[Any] = []  # SWIG selectors point into these: keep them alive
        allow: Any = None
        if allowed is not None:
            allow = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
            keep += [allowed, allow]
        sel: Any = allow
        if self.dead:
            gone = faiss.IDSelectorBitmap(len(self.bitmap), faiss.swig_ptr(self.bitmap))
            sel = faiss.IDSelectorNot(gone)
            keep += [self.bitmap, gone, sel]
            if allow is not None:
                sel = faiss.IDSelectorAnd(sel, allow)
                keep.append(sel)
        parts = [self._search_base(queries, k, sel, nprobe)]
        with self.lock:
            if self.recent.ntotal:
                params = search_params(False, allow, 0)
                kk = min(k, int(self.recent.ntotal))
                parts.append(self.recent.search(queries, kk, params=params))
        return merge(parts, k)

    def _search_base(
        self, queries: np.ndarray, k: int, sel: Any, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        index = self.base.index
        if not index.ntotal:
            return np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0))
        params = search_params(self.base.meta.kind != "exact", sel, nprobe, hnsw(index))
        sims, ids = index.search(queries, min(k, int(index.ntotal)), params=params)
        return sims, ids


def search_params(ivf: bool, sel: Any, nprobe: int, graph: bool = False) -> Any:
    """FAISS search parameters: an id selector (or None); nprobe for IVF, and efSearch for an
    HNSW coarse quantizer (`graph`: at least policy.HNSW_EF_PER_PROBE * nprobe)."""
    import faiss

    params: Any = faiss.SearchParametersIVF() if ivf else faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    if ivf:
        params.nprobe = nprobe
    if ivf and graph:
        coarse = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        coarse.efSearch = max(P.HNSW_MIN_EF, P.HNSW_EF_PER_PROBE * nprobe)
        params.quantizer_params = coarse
        params.keep = coarse  # SWIG holds a bare pointer: the Python object must outlive it
    return params


def hnsw(index: Any) -> bool:
    """Whether an IVF index's coarse quantizer is an HNSW graph."""
    import faiss

    try:
        quantizer = faiss.extract_index_ivf(index).quantizer
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_index(quantizer), faiss.IndexHNSW)


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise best k of several (similarities, ids) results, -1 ids dropped to the end."""
    sims = np.concatenate([np.asarray(p[0], np.float32) for p in parts], axis=1)
    ids = np.concatenate([np.asarray(p[1], np.int64) for p in parts], axis=1)
    sims = np.where(ids < 0, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def exact_among(
    queries: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force best k of `vectors` (exact, from the store) for each query."""
    if not len(ids):
        return np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0))
    sims = queries @ vectors.T
    kk = min(k, len(ids))
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    part = np.take_along_axis(sims, top, axis=1)
    return merge([(part, ids[top])], kk)
