"""A search that stops probing once its candidates stop improving (imgsearch.index.staged), on a
real FAISS fast-scan IVF index: what it finds against FAISS's own scan of the lists it probed,
when it stops, a base's search with it (a coded recent segment searched over the same lists),
and the tuning's choice between it and a fixed nprobe. (End to end: tests/test_index.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from imgsearch.index import staged as S
from imgsearch.index.base import Base, BaseMeta
from imgsearch.index.scans import assign_ivf, preassigned
from imgsearch.index.segments import Segments
from imgsearch.index.tuning import Tuned, staged_choice, without_own

from .helpers import cone

DIM = 32
LISTS = 256
K = 100


@pytest.fixture(scope="module")
def library() -> tuple[np.ndarray, object, object]:
    """20,000 rows in 200 clusters of a cone (like embeddings), a trained 4-bit fast-scan IVF
    index of them (ids 0..n-1) and its trained empty copy."""
    import faiss

    x = cone(20_000, 200, seed=3, dim=DIM)
    index = faiss.index_factory(DIM, f"IVF{LISTS},PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    template = faiss.clone_index(index)
    index.add(x)
    return x, index, template


def queries(x: np.ndarray, n: int = 60) -> np.ndarray:
    """New vectors near stored ones (a fresh photo of the same subject)."""
    rng = np.random.default_rng(11)
    q = x[rng.choice(len(x), n, replace=False)] + 0.05 * rng.standard_normal((n, DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def scanner(ivf: object, scanned: np.ndarray, k: int) -> S.Scan:
    def scan(rows: np.ndarray, lists: np.ndarray, dist: np.ndarray) -> object:
        return preassigned(ivf, scanned[rows], k, lists, dist, None)

    return scan  # type: ignore[return-value]


def same_hits(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    """The same scores, and the same ids but among ties at a row's last score (4-bit codes
    score many rows alike; which of them fill the last places is the scan's order)."""
    np.testing.assert_array_equal(a[0], b[0])
    for sa, ia, ib in zip(a[0], a[1], b[1], strict=True):
        above = sa > sa[-1]
        assert set(ia[above].tolist()) == set(ib[above].tolist())


def test_stages_cover_the_lists_in_order_and_grow() -> None:
    for cap in (1, 31, 32, 33, 256, 5000):
        parts = S.stages(cap)
        assert parts[0][0] == 0 and parts[-1][1] == cap
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        assert all(end - first >= min(S.STAGE_LISTS, cap - first) for first, end in parts)
    sizes = [end - first for first, end in S.stages(5000)]
    assert sizes[0] == S.STAGE_LISTS and max(sizes) > 4 * S.STAGE_LISTS  # stages grow
    assert len(S.stages(5000)) < 5000 // S.STAGE_LISTS


def test_a_staged_search_finds_what_a_scan_of_its_probed_lists_finds(library) -> None:
    x, index, _ = library
    ivf, scanned, lists, dist = assign_ivf(index, queries(x), LISTS, None)
    sims, ids, done = S.staged(scanner(ivf, scanned, K), lists, dist, K, 1, 10)
    # stopped early (one quiet stage after the first), each query at a stage's end
    ends = {end for _, end in S.stages(LISTS)}
    assert set(done.tolist()) <= ends and done.min() >= 2 * S.STAGE_LISTS
    assert done.mean() < LISTS / 2
    fixed = preassigned(ivf, scanned, K, S.unprobed(lists, done), dist, None)  # (-1: skipped)
    same_hits((sims, ids), fixed)
    # a batch stops each query where that query alone stops
    for row in (0, 7, 33):
        alone = S.staged(scanner(ivf, scanned[row : row + 1], K), lists[row : row + 1],
                         dist[row : row + 1], K, 1, 10)  # fmt: skip
        assert alone[2][0] == done[row]
        same_hits((alone[0], alone[1]), (sims[row : row + 1], ids[row : row + 1]))


def test_more_patience_probes_more_lists_up_to_all_of_them(library) -> None:
    x, index, _ = library
    ivf, scanned, lists, dist = assign_ivf(index, queries(x), LISTS, None)
    probed = [S.staged(scanner(ivf, scanned, K), lists, dist, K, p, 10)[2] for p in (1, 2, 4)]
    assert (probed[0] <= probed[1]).all() and (probed[1] <= probed[2]).all()
    assert probed[0].sum() < probed[2].sum()
    sims, ids, done = S.staged(scanner(ivf, scanned, K), lists, dist, K, len(S.stages(LISTS)), 10)
    assert (done == LISTS).all()
    same_hits((sims, ids), preassigned(ivf, scanned, K, lists, dist, None))


def test_the_running_best_counts_only_what_beats_it(library) -> None:
    """A stage whose candidates fill the running best's lower places, but none beats its
    last score, is quiet: a larger running best (more results asked) keeps a search going
    longer."""
    x, index, _ = library
    ivf, scanned, lists, dist = assign_ivf(index, queries(x), LISTS, None)
    few = S.staged(scanner(ivf, scanned, K), lists, dist, K, 1, 1)[2]
    many = S.staged(scanner(ivf, scanned, K), lists, dist, K, 1, K)[2]
    assert (few <= many).all() and few.sum() < many.sum()


def test_codes_counts_the_probed_lists_sizes() -> None:
    sizes = np.array([5, 10, 20, 40])
    lists = np.array([[3, 2, 1, 0], [0, 1, -1, -1]])
    assert S.codes(sizes, lists) == (75 + 15) / 2
    assert S.codes(sizes, lists, np.array([1, 2])) == (40 + 15) / 2


def test_a_base_search_with_patience_scans_its_recent_segment_over_the_same_lists(library):
    x, index, template = library
    import faiss

    base_ids = np.arange(15_000, dtype=np.int64)
    base_index = faiss.clone_index(template)
    base_index.add_with_ids(x[:15_000], base_ids)
    meta = BaseMeta("m", DIM, "ivf-pqfs", f"IVF{LISTS},PQ16x4fs", 1, 15_000, 15_000, time.time())
    seg = Segments(Base(base_index, base_ids, meta, template), threading.Lock())
    with seg.lock:
        seg.add(np.arange(15_000, 20_000, dtype=np.int64), x[15_000:])
    q = queries(x, 20)
    everything = seg.search(q, 50, None, LISTS)
    patient = seg.search(q, 50, None, LISTS, patience=len(S.stages(LISTS)), results=10)
    np.testing.assert_array_equal(everything[0], patient[0])  # every list probed: the same
    hasty = seg.search(q, 50, None, LISTS, patience=1, results=10)
    # The base's lists a query probed, from a staged scan of the base alone, bound what the
    # recent segment may return: none of its rows outside them.
    ivf, scanned, lists, dist = assign_ivf(base_index, q, LISTS, None)
    _, _, done = S.staged(scanner(ivf, scanned, 50), lists, dist, 50, 1, 10)
    owner = np.empty(20_000, np.int64)
    for i in range(LISTS):
        n = ivf.invlists.list_size(i)
        if n:
            owner[faiss.rev_swig_ptr(ivf.invlists.get_ids(i), n)] = i
    recent_lists = faiss.extract_index_ivf(seg.recent)
    for i in range(LISTS):
        n = recent_lists.invlists.list_size(i)
        if n:
            owner[faiss.rev_swig_ptr(recent_lists.invlists.get_ids(i), n)] = i
    found_recent = 0
    for row, found in enumerate(hasty[1]):
        probed = set(lists[row, : done[row]].tolist())
        mine = found[found >= 15_000]
        found_recent += len(mine)
        assert {int(owner[i]) for i in mine} <= probed
    assert found_recent  # (the recent rows were searched at all)
    assert (hasty[1] >= 0).all()


def test_the_tuning_keeps_the_stages_only_where_they_compare_fewer_codes(
    library, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, index, _ = library
    rng = np.random.default_rng(5)
    q_ids = np.sort(rng.choice(len(x), 100, replace=False))
    vecs = x[q_ids]
    order = np.argsort(-(vecs @ x.T), axis=1, kind="stable")[:, :11]
    truth = without_own(order, q_ids, 10)

    def fetch(ids):
        ids = np.asarray(ids, np.int64)
        return ids, x[ids]

    def choice(fixed: Tuned, goal: float) -> Tuned:
        return staged_choice(index, (q_ids, vecs), truth, fetch, None, None, fixed, goal)

    # (this index's 4-bit codes rank 275 candidates to ~0.85 at any nprobe)
    fixed = Tuned(64, 0.86, 25)
    monkeypatch.setattr(S, "STAGED_SHARE", 10.0)  # any cost: the least patience meeting 0.8
    chosen = choice(fixed, 0.8)
    assert chosen.patience == 1 and chosen.nprobe == 2 * fixed.nprobe
    assert chosen.recall >= 0.8 and chosen.rescore == fixed.rescore
    assert choice(fixed, 0.95) == fixed  # no patience reaches the fixed nprobe's recall
    monkeypatch.setattr(S, "STAGED_SHARE", 0.0)  # never cheaper: the fixed nprobe kept
    assert choice(fixed, 0.8) == fixed
    small = Tuned(S.STAGE_LISTS // 2, 0.86, 25)  # one stage at most: nothing to stop early
    monkeypatch.setattr(S, "STAGED_SHARE", 10.0)
    assert choice(small, 0.8) == small
