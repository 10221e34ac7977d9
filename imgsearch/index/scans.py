"""Scans of an IVF index as imgsearch makes them: the coarse assignment (`probe`), then FAISS's
scan of the given lists only (`preassigned`, split over two threads by `split_scan`), with id
selectors and an HNSW coarse quantizer's efSearch (`search_params`); `search_ivf` both at
once. A base's searches (segments.py), the tuning's (tuning.py) and the benchmarks' go through
here, so each is made the way the daemon makes it."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np

from . import policy as P
from .coarse import inner
from .hits import merge
from .rotation import rotated, transform_of

# From this many lists probed, an HNSW coarse quantizer is searched by a flat scan of its
# centroids (exact, and quicker: at 10M, 12,649 centroids, 1,051 probed: 1.0 ms against 1.8
# with efSearch 1,051 and 3.0 with 2,102; the same recall, bench/big_search.py).
FLAT_COARSE_FROM = 256


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
        coarse = hnsw_params(nprobe)
        params.quantizer_params = coarse
        params.keep = coarse  # SWIG holds a bare pointer: the Python object must outlive it
    return params


def probe(ivf: Any, queries: np.ndarray, nprobe: int, graph: bool) -> tuple[Any, Any]:
    """FAISS's coarse assignment of `queries` (in the IVF index's space) to their nprobe
    nearest lists, as its own search makes it (distances as its quantizer gives them: L2 for
    a centred base, coarse.inner); over an HNSW quantizer (`graph`), by a flat scan of its
    centroids from FLAT_COARSE_FROM lists, else at efSearch policy.HNSW_EF_PER_PROBE x nprobe."""
    import faiss

    if graph and nprobe >= FLAT_COARSE_FROM:
        graph_index: Any = faiss.downcast_index(ivf.quantizer)
        quantizer = faiss.downcast_index(graph_index.storage)
        return quantizer.search(queries, nprobe)
    coarse = hnsw_params(nprobe) if graph else None
    return ivf.quantizer.search(queries, nprobe, params=coarse)  # type: ignore[no-any-return]


def hnsw_params(nprobe: int) -> Any:
    """An HNSW coarse quantizer's search parameters for nprobe lists: efSearch at least
    policy.HNSW_EF_PER_PROBE * nprobe."""
    import faiss

    params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    params.efSearch = max(P.HNSW_MIN_EF, P.HNSW_EF_PER_PROBE * nprobe)
    return params


def search_ivf(
    index: Any, queries: np.ndarray, k: int, nprobe: int, norms: np.ndarray | None,
    sel: Any = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """An IVF index's search (rotated or not) as a base's is made (`probe`, coarse.inner with
    the index's centre_norms, `preassigned`, ids filtered by `sel`) for callers without a
    base's assignment: a tuning's, a coded recent segment's beside an empty base."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    queries = rotated(transform_of(index), np.ascontiguousarray(queries, np.float32))
    nprobe = min(nprobe, ivf.nlist)
    dist, lists = probe(ivf, queries, nprobe, hnsw(index))
    return preassigned(ivf, queries, k, lists, inner(queries, lists, dist, norms), sel)


def split_scan(
    scan: Any, queries: np.ndarray, k: int, lists: np.ndarray, dist: np.ndarray, sel: Any,
    helper: Executor | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`preassigned`, with `helper` on two threads: every other list scanned there (FAISS
    releases the GIL), the rest here, the two best k merged."""
    if helper is None:
        return preassigned(scan, queries, k, lists, dist, sel)
    other = helper.submit(preassigned, scan, queries, k, lists[:, 1::2], dist[:, 1::2], sel)
    mine = preassigned(scan, queries, k, lists[:, ::2], dist[:, ::2], sel)
    return merge([mine, other.result()], k)


def preassigned(
    ivf: Any, queries: np.ndarray, k: int, lists: np.ndarray, dist: np.ndarray, sel: Any
) -> tuple[np.ndarray, np.ndarray]:
    """An IVF search of the given lists only (FAISS's search_preassigned, with an id selector:
    the Python wrapper takes no search parameters, so the C++ method is called)."""
    import faiss

    lists = np.ascontiguousarray(lists, dtype=np.int64)
    dist = np.ascontiguousarray(dist, dtype=np.float32)
    n = len(queries)
    sims, ids = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    params = search_params(True, sel, lists.shape[1])
    ivf.search_preassigned_c(
        n, faiss.swig_ptr(queries), k, faiss.swig_ptr(lists), faiss.swig_ptr(dist),
        faiss.swig_ptr(sims), faiss.swig_ptr(ids), False, params,
    )  # fmt: skip
    return sims, ids


def hnsw(index: Any) -> bool:
    """Whether an IVF index's coarse quantizer is an HNSW graph."""
    import faiss

    try:
        quantizer = faiss.extract_index_ivf(index).quantizer
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_index(quantizer), faiss.IndexHNSW)
