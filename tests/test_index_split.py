"""One search on two threads: the probed lists split between the request's thread and a helper.

The split must find what the one-thread search finds (deletions and allow-lists included), and
must only be used when nothing else wants the CPU (one search in flight, no build, no import).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch.catalog import Catalog
from imgsearch.index import Policy
from imgsearch.index import coarse as C
from imgsearch.index import reads as R
from imgsearch.index import rotation as R_
from imgsearch.index import scans as S
from imgsearch.store import FileFacts, NewImage

DIM = 32
N = 3000


def vectors(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def shared(a: np.ndarray, b: np.ndarray) -> float:
    """The share of two hit lists' ids in common, padding (-1) left out: where the probed lists
    hold fewer than k allowed vectors both lists end in padding, which is no hit in common."""
    x, y = set(a[a >= 0].tolist()), set(b[b >= 0].tolist())
    return len(x & y) / max(1, len(x), len(y))


class Counting(ThreadPoolExecutor):
    """The helper thread, counting the halves it is handed."""

    def __init__(self) -> None:
        super().__init__(1)
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(params=["ivf-pqfs", "ivf-pqfs-hnsw", "ivf-pqfs-centred"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    policy = Policy(exact_max=100, delta_max=1 << 40)
    if request.param.endswith("hnsw"):
        policy = Policy(exact_max=100, delta_max=1 << 40, hnsw_min_lists=1)
    if request.param.endswith("centred"):  # lists probed by L2 (kmeans.around)
        policy = Policy(exact_max=100, delta_max=1 << 40, centred=True)
    catalog = Catalog(tmp_path, "m", DIM, policy)
    items = [
        NewImage(FileFacts(f"/v/{i}.jpg", 1, 1, f"h{i}", 1, 1), v) for i, v in enumerate(vectors(N))
    ]
    for at in range(0, N, 500):
        catalog.put(items[at : at + 500])
    catalog.index.rebase()
    yield catalog
    catalog.close()


@pytest.mark.parametrize("flat_from", [1 << 30, 1])
def test_the_split_search_finds_what_one_thread_finds(
    catalog: Catalog, flat_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(`flat_from` 1: an HNSW quantizer's lists are found by a flat scan of its centroids.)"""
    import faiss

    monkeypatch.setattr(S, "FLAT_COARSE_FROM", flat_from)
    seg = catalog.index._segments
    assert seg.base.meta.kind == "ivf-pqfs"
    ids = seg.ids()
    with seg.lock:  # deletions: the bitmap selector applies in both halves
        seg.remove(ids[::7])
    queries = vectors(N + 20)[N:]
    helper = Counting()
    lists = int(faiss.extract_index_ivf(seg.base.index).nlist)
    for allowed in (None, np.sort(ids[::3])):
        for nprobe in (2, 7, lists):
            monkeypatch.setattr(S, "FLAT_COARSE_FROM", 1 << 30)
            one = seg.search(queries, 40, allowed, nprobe)  # FAISS's own search
            monkeypatch.setattr(S, "FLAT_COARSE_FROM", flat_from)
            two = seg.search(queries, 40, allowed, nprobe, helper)
            overlap = np.mean([shared(a, b) for a, b in zip(one[1], two[1], strict=True)])
            assert overlap >= 0.95, (allowed is None, nprobe, overlap)
            gone = set(seg.deleted().tolist())
            assert gone and not gone & set(two[1].ravel().tolist())
            if allowed is not None:
                assert set(two[1].ravel().tolist()) - {-1} <= set(allowed.tolist())
    assert helper.calls == 12  # each search: half the coarse assignment, half the lists
    helper.shutdown()


def test_the_lists_found_on_two_threads_are_the_nearest_centres(catalog: Catalog) -> None:
    """The coarse assignment split in two halves of the centres (a float16 copy of the
    quantizer's own, flat or an HNSW graph's storage) finds each query's nearest lists, best
    first, their similarities (a centred base's: L2 distances, then made inner products by
    coarse.inner) within float16's rounding of the exact ones."""
    import faiss

    seg = catalog.index._segments
    quantizer = faiss.extract_index_ivf(seg.base.index).quantizer
    lists = int(quantizer.ntotal)
    centres = C.centres(seg.base.index)
    assert centres is not None and centres.shape == (lists, DIM)
    assert np.array_equal(centres, quantizer.reconstruct_n(0, lists))
    assert seg.coarse is not None and seg.coarse.count == lists
    queries = vectors(N + 20)[N:]
    products = queries @ centres.T
    by_l2 = C.centred(seg.base.index)
    assert by_l2 == (seg.norms is not None) == seg.base.meta.centred
    # Nearer: larger (the L2 distances negated)
    squared = (queries**2).sum(axis=1)[:, None] + (centres**2).sum(axis=1)[None, :]
    exact = 2 * products - squared if by_l2 else products
    sign = -1 if by_l2 else 1
    tolerance = 2e-3 * np.abs(queries).sum(axis=1, keepdims=True).max()  # float16: 11 bits
    with ThreadPoolExecutor(1) as helper:
        for nprobe in (1, 5, lists // 2 + 1, lists):
            sims, found = seg.coarse.nearest(queries, nprobe, helper)
            want = np.sort(exact, axis=1)[:, ::-1][:, :nprobe]
            assert found.shape == (len(queries), nprobe)
            assert np.all(np.diff(sign * sims, axis=1) <= 0)  # best first
            near = np.take_along_axis(exact, found, axis=1)
            assert np.allclose(sign * sims, near, atol=2 * tolerance)
            made = C.inner(queries, found, sims, seg.norms)
            assert np.allclose(made, np.take_along_axis(products, found, axis=1), atol=tolerance)
            # the nearest lists but for near-ties at the last place
            assert np.allclose(np.take_along_axis(exact, found, axis=1), want, atol=2 * tolerance)
            assert all(len(set(row)) == nprobe for row in found.tolist())  # each list once
    assert C.centres(faiss.IndexFlatIP(DIM)) is None  # exact: no lists
    l2 = faiss.index_factory(DIM, "IVF4,Flat")  # lists found by L2 distance: FAISS's own order
    l2.train(vectors(200))
    assert C.centres(l2) is None
    assert C.Coarse.of(l2) is None


def test_the_split_is_used_only_when_the_index_is_idle(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = catalog.index
    helper = Counting()
    index._reads.helper.shutdown()
    monkeypatch.setattr(index._reads, "helper", helper)
    query = vectors(N + 1)[N:]
    monkeypatch.setattr(R, "SPLIT_MIN_NPROBE", 1 << 30)
    index.search(query, 10)
    assert helper.calls == 0  # too few lists probed to be worth it
    monkeypatch.setattr(R, "SPLIT_MIN_NPROBE", 1)
    split = index.search(query, 10)
    assert helper.calls == 2  # half the centres compared there, then half the lists scanned
    with index.hold():  # an import runs: its batches need the other core
        alone = index.search(query, 10)
    assert helper.calls == 2
    assert split[1].tolist() == alone[1].tolist()  # re-scored: the same hits either way
    index._reads.searching += 1  # another search in flight
    index.search(query, 10)
    index._reads.searching -= 1
    assert helper.calls == 2


@pytest.mark.parametrize("split", [False, True])
def test_a_coded_recent_segment_is_searched_in_the_base_s_lists(
    catalog: Catalog, split: bool
) -> None:
    """The recent segment (a copy of the base's template: the same lists) is searched with the
    base's coarse assignment, not one of its own, and finds what FAISS's own searches of the
    base and of it find together."""
    import faiss

    from imgsearch.index.hits import merge

    added = vectors(N + 300)[N:]
    catalog.put(
        [NewImage(FileFacts(f"/w/{i}.jpg", 1, 1, f"w{i}", 1, 1), v) for i, v in enumerate(added)]
    )
    from imgsearch.index import codes

    seg = catalog.index._segments
    assert seg.coded and seg.recent.ntotal == 300
    recent_lists = faiss.downcast_index(faiss.extract_index_ivf(seg.recent))
    assert recent_lists.implem == codes.LONE_IMPLEM  # searched alone or by a few queries
    queries = np.ascontiguousarray(added[::10])
    helper = Counting() if split else None
    for allowed in (None, np.sort(seg.ids()[::2])):
        allow = None
        if allowed is not None:
            allow = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        for nprobe in (2, 7):
            sims, ids = seg.search(queries, 20, allowed, nprobe, helper)
            params = S.search_params(True, allow, nprobe, seg.graph)
            base = seg.base.index.search(queries, 20, params=params)
            own = merge([base, seg.recent.search(queries, 20, params=params)], 20)
            assert np.allclose(sims, own[0], atol=1e-4), (allowed is None, nprobe)
            overlap = np.mean([shared(a, b) for a, b in zip(ids, own[1], strict=True)])
            assert overlap >= 0.95, (allowed is None, nprobe, overlap)
            recent = set(seg.recent_ids().tolist())
            assert any(i in recent for i in ids.ravel().tolist())  # the recent rows are found
    if helper is not None:
        assert helper.calls == 8  # the base's lists split, the recent segment's searched here
        helper.shutdown()


def test_a_lone_query_scans_the_base_s_lists_through_its_lone_view(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One query at a time, the base's lists are scanned through `lone_view` (FAISS's one
    lookup table for every list, the codes shared, not copied), split or not, and find what
    FAISS's own search of the base finds (deletions and allow-lists applied); the base itself
    keeps FAISS's default for batches (a tuning's), and the view outlives the caller's
    reference to the base."""
    import gc

    import faiss

    from imgsearch.index import codes

    seg = catalog.index._segments
    ivf = faiss.downcast_index(faiss.extract_index_ivf(seg.base.index))
    assert seg.lone is not None and seg.lone.implem == codes.LONE_IMPLEM and ivf.implem == 0
    stored = seg.ids()
    with seg.lock:
        seg.remove(stored[::5])
    scanned: list[Any] = []

    def counting(index: Any, *args: Any) -> Any:
        scanned.append(index)
        return preassigned(index, *args)

    preassigned = S.preassigned
    monkeypatch.setattr(S, "preassigned", counting)
    lists = int(ivf.nlist)
    helper = Counting()
    overlaps: list[float] = []
    for query in vectors(N + 12)[N:]:
        q = query[None]
        for allowed in (None, np.sort(seg.ids()[::3])):
            gone = faiss.IDSelectorBitmap(len(seg.bitmap), faiss.swig_ptr(seg.bitmap))
            present: Any = faiss.IDSelectorNot(gone)  # (each selector kept alive: SWIG)
            allow = present
            if allowed is not None:
                batch_of = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
                allow = faiss.IDSelectorAnd(present, batch_of)
            for nprobe, k in ((2, 5), (7, 40), (lists, 40)):
                own = seg.base.index.search(
                    q, k, params=S.search_params(True, allow, nprobe, seg.graph)
                )
                for split in (None, helper):
                    scanned.clear()
                    sims, ids = seg.search(q, k, allowed, nprobe, split)
                    assert scanned and all(index is seg.lone for index in scanned)
                    assert np.allclose(np.sort(sims[0]), np.sort(own[0][0]), atol=1e-4)
                    overlaps.append(shared(ids[0], own[1][0]))  # (ties at the k-th place)
    assert np.mean(overlaps) >= 0.97
    batch = vectors(N + 5)[N:]
    scanned.clear()
    seg.search(batch, 10, None, 7)
    assert all(index is not seg.lone for index in scanned)  # batches: the base's own way
    helper.shutdown()

    index = faiss.clone_index(seg.base.index)
    view = codes.lone_view(index)
    assert view is not None and view.ntotal == index.ntotal
    rotated = R_.rotated(R_.transform_of(index), batch)
    dist, found = view.quantizer.search(rotated, 7)
    want = preassigned(faiss.extract_index_ivf(index), rotated, 10, found, dist, None)
    del index  # the view keeps it (its lists, its quantizer)
    gc.collect()
    got = preassigned(view, rotated, 10, found, dist, None)
    assert np.allclose(got[0], want[0], atol=1e-4)
    assert np.mean([shared(a, b) for a, b in zip(got[1], want[1], strict=True)]) >= 0.95
    assert codes.lone_view(faiss.IndexFlatIP(DIM)) is None  # exact: no lists to view
