"""Search results as (similarities, ids) arrays, best first, -1 padded: merged, found exactly
among given vectors, or re-ranked with exact vectors read from the store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import idsets

Hits = tuple[np.ndarray, np.ndarray]  # (similarities, ids), best first, -1 padded
# Exact vectors of stored ids (present ones only), from the store: (ids, n x dim float32).
Fetch = Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]]


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> Hits:
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


def rescored(
    queries: np.ndarray, ids: np.ndarray, k: int, fetch: Fetch
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids (-1 padded) with exact vectors from the store (`fetch`: one read
    of the distinct ids, sorted); ids no longer stored drop out."""
    found, vectors = fetch(idsets.unique(ids[ids >= 0]).tolist())
    order = np.argsort(found, kind="stable")  # the store answers in id order: usually a no-op
    found, vectors = found[order], vectors[order]
    sims = np.full(ids.shape, -np.inf, np.float32)
    if len(found):
        where = np.minimum(np.searchsorted(found, ids), len(found) - 1)
        ok = (ids >= 0) & (found[where] == ids)
        for q in range(len(ids)):  # one matrix-vector product a query
            sims[q, ok[q]] = vectors[where[q, ok[q]]] @ queries[q]
    return merge([(sims, np.where(np.isfinite(sims), ids, -1))], k)
