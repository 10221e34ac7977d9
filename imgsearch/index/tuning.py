"""Tuning a base: the smallest nprobe (and the re-scoring depth) whose searches of the tuning
queries (stored vectors) reach the recall target against their exact ground truth.

`tune` measures recall@10 at (depth, nprobe) pairs that `choose` asks for: deepest depth
first, its nprobe doubled from a floor (`policy.tune_start`) then bisected, shallower depths
only where they can be cheaper by the cost model. Each measurement searches the queries as a
daemon search does (fast-scan codes, fine codes, exact re-scoring from the store). Its
re-scoring reads go through `Fetched`: the searches of one tuning re-score mostly the same
rows (the same queries at neighbouring nprobe), so each row is read from SQLite once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from functools import cache, partial
from typing import Any

import numpy as np

from . import fine as F
from . import policy as P
from .coarse import centre_norms
from .hits import Fetch, rescored
from .rotation import transform_of
from .scans import search_ivf
from .stopping import Stopped

log = logging.getLogger(__name__)


class Fetched:
    """`fetch` (the store's exact vectors of sorted distinct ids) remembering what it read, up
    to `rows` rows (then later reads pass through): a tuning's searches re-score mostly the
    same candidates, and reading them again from SQLite was a quarter of the worker's time
    while a build added its rows and tuned (py-spy on a 500k-row import, docs/BENCHMARKS.md)."""

    def __init__(self, fetch: Fetch, rows: int) -> None:
        self.fetch = fetch
        self.rows = rows
        self.ids = np.zeros(0, np.int64)  # sorted; `at` holds each one's row of `kept`
        self.at = np.zeros(0, np.int64)
        self.kept: np.ndarray | None = None  # [rows, dim] float32, len(ids) rows filled

    def __call__(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        want = np.asarray(ids, np.int64)
        where = np.minimum(np.searchsorted(self.ids, want), max(0, len(self.ids) - 1))
        have = self.ids[where] == want if len(self.ids) else np.zeros(len(want), bool)
        old_ids = want[have]
        old = self.kept[self.at[where[have]]] if self.kept is not None else None
        if have.all() and old is not None:
            return old_ids, old
        new_ids, new = self.fetch(want[~have].tolist())
        if not len(new_ids):
            return (old_ids, old) if old is not None else (new_ids, new)
        self._keep(new_ids, new)
        if old is None or not len(old_ids):
            return new_ids, new
        found = np.concatenate([old_ids, new_ids])
        order = np.argsort(found, kind="stable")
        return found[order], np.concatenate([old, new])[order]

    def _keep(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start = len(self.ids)
        room = min(len(ids), self.rows - start)
        if room <= 0:
            return
        if self.kept is None:  # pages are touched as rows fill it, not at once
            self.kept = np.empty((self.rows, vectors.shape[1]), np.float32)
        self.kept[start : start + room] = vectors[:room]
        merged = np.concatenate([self.ids, ids[:room]])
        order = np.argsort(merged, kind="stable")
        self.ids = merged[order]
        self.at = np.concatenate([self.at, np.arange(start, start + room)])[order]


def tune(
    index: Any, spec: P.Spec, queries: tuple[np.ndarray, np.ndarray], truth: np.ndarray,
    fetch: Fetch, policy: P.Policy, stop: threading.Event | None = None,
    fine: F.Fine | None = None,
) -> tuple[int, float, int]:  # fmt: skip
    """(nprobe, recall, rescore) for `index`, chosen by `choose` from recall@10 of the tuning
    queries against `truth`, each (depth, nprobe) searched at most once; candidates ranked by
    `fine` codes first where given, as searches do."""
    searches = [0]
    fetched = Fetched(fetch, max(1, P.TUNE_CACHE_BYTES // (4 * queries[1].shape[1])))
    floor = _kth_scores(queries[1], truth, fetched)

    @cache
    def recall_at(rescore: int, nprobe: int) -> float:
        searches[0] += 1
        return _recall(index, queries, (truth, floor), fetched, stop, rescore, nprobe, fine)

    per_list = max(1.0, int(index.ntotal) / max(1, spec.lists))  # codes a list, as scanned
    nprobe, recall, rescore = choose(recall_at, spec, per_list, policy.target_recall)
    log.info("index tuning: %d searches of the %d queries", searches[0], len(truth))
    if recall < policy.target_recall:
        log.warning("index %s reaches recall@10 %.3f only", spec.factory, recall)
    return nprobe, recall, rescore


def choose(
    recall_at: Callable[[int, int], float], spec: P.Spec, per_list: float, target: float
) -> tuple[int, float, int]:
    """(nprobe, recall, rescore): the smallest nprobe reaching `target` (plus its margin where
    that can be had); for quantized codes under each re-scoring depth, the cheapest pair with
    the margin by the cost model (else the cheapest meeting the target, else the best recall).
    `recall_at(rescore, nprobe)`: recall@10 searching so (with fine codes, rescore x k of a
    pool of fine.pool's candidates are re-scored: the cost model counts the rows read).

    Depths are searched deepest first. A shallower depth re-scores the first of the same
    candidates, so it needs at least the nprobe the deeper one needed, and it can win only
    below the nprobe where it costs as much as the best pair so far: one search there says
    whether it can, and a bisection between the two bounds finds its nprobe. (Searched
    shallowest first, each depth doubled nprobe from 1, up to all the lists for a depth that
    cannot reach the goal: ~15 searches wasted per such depth, tests/test_tuning.py.)"""
    goal = P.tuning_goal(target)

    def pair(nprobe: int, recall: float, rescore: int) -> tuple[int, float, int, float, int]:
        # Pairs with the margin first, then those meeting the target, then the best recall.
        tier = 0 if recall >= goal else 1 if recall >= target else 2
        cost = nprobe * per_list + rescore * P.RECALL_K * P.RESCORE_COST
        log.info(
            "tuned %s: rescore %d, nprobe %d: recall@10 %.3f", spec.factory, rescore, nprobe, recall
        )
        return tier, cost if tier < 2 else -recall, nprobe, recall, rescore

    depths = sorted(P.RESCORE_FACTORS, reverse=True) if spec.quantized else [0]
    tried: list[tuple[int, float, int, float, int]] = []
    under = {goal: 0, target: 0}  # the largest nprobe seen under each aim, at any depth tried
    for rescore in depths[:1] + ([P.DEEP_RESCORE] if spec.quantized else []):
        at = partial(recall_at, rescore)
        start = P.tune_start(spec.lists)
        nprobe, recall, low = _smallest(at, spec.lists, goal, start)
        under[goal] = max(under[goal], low)
        if recall < goal:
            nprobe, recall, low = _smallest(at, spec.lists, target, start)
            under[target] = max(under[target], low)
        tried.append(pair(nprobe, recall, rescore))
        if recall >= goal:  # the codes rank well enough: DEEP_RESCORE is for when they do not
            break
    for rescore in depths[1:]:
        tier, best, *_ = min(tried)
        if tier == 2:  # no deeper depth met the target: no shallower one will
            break
        aim = goal if tier == 0 else target
        at = partial(recall_at, rescore)
        high = min(spec.lists, int((best - rescore * P.RECALL_K * P.RESCORE_COST) / per_list))
        if high <= under[aim] or at(high) < aim:
            continue  # cannot be cheaper than the best pair at its tier
        nprobe, recall, low = _bisect(at, under[aim], high, aim)
        under[aim] = max(under[aim], low)
        tried.append(pair(nprobe, recall, rescore))
    _, _, nprobe, recall, rescore = min(tried)
    return nprobe, recall, rescore


def _smallest(
    recall_at: Callable[[int], float], lists: int, goal: float, start: int = 1
) -> tuple[int, float, int]:
    """Doubling from `start`, then bisection, for the smallest nprobe meeting the goal (within
    1/TUNE_PRECISION of it: a few percent more lists than needed, half the searches):
    (nprobe, its recall, the largest nprobe seen under the goal)."""
    low, high = 0, max(1, min(start, lists))
    found = recall_at(high)
    while found < goal and high < lists:
        low, high = high, min(lists, high * 2)
        found = recall_at(high)
    if found < goal:
        return high, found, high
    return _bisect(recall_at, low, high, goal)


def _bisect(
    recall_at: Callable[[int], float], low: int, high: int, goal: float
) -> tuple[int, float, int]:
    """The smallest nprobe in (low, high] meeting the goal (`high` does), as _smallest says it."""
    found = recall_at(high)
    while high - low > max(1, high // P.TUNE_PRECISION):
        mid = (low + high) // 2
        got = recall_at(mid)
        if got >= goal:
            high, found = mid, got
        else:
            low = mid
    return high, found, low


# A hit scored within this of the true 10th neighbour's similarity counts as found (a tie).
TIE = 1e-5


def _kth_scores(queries: np.ndarray, truth: np.ndarray, fetch: Fetch) -> np.ndarray:
    """Each tuning query's exact similarity to its last true neighbour (-inf: none)."""
    last = np.array([row[row >= 0][-1] if (row >= 0).any() else -1 for row in truth], np.int64)
    found, vectors = fetch(sorted({int(i) for i in last if i >= 0}))
    at = {int(i): n for n, i in enumerate(found)}
    return np.array(
        [
            float(vectors[at[int(i)]] @ q) if int(i) in at else -np.inf
            for q, i in zip(queries, last, strict=True)
        ],
        np.float32,
    )


def _recall(
    index: Any,
    queries: tuple[np.ndarray, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
    fetch: Fetch,
    stop: threading.Event | None,
    rescore: int,
    nprobe: int,
    fine: F.Fine | None = None,
) -> float:
    """recall@10 of the tuning queries: a hit is a true neighbour, or (re-scored: exact
    similarities) one as similar as the 10th true one. Copies of one image tie, and which of
    them exact search puts in its 10 is arbitrary: counted by id alone, a library with many
    copies never reached the target and was tuned to probe every list."""
    if stop is not None and stop.is_set():
        raise Stopped
    k = P.RECALL_K
    q_ids, vectors = queries
    truth_ids, floor = truth
    read = (k + 1) * max(1, rescore)
    rotated = transform_of(index) is not None
    pool = F.pool(k + 1, read, rotated) if rescore and fine is not None else read
    sims, ids = search_ivf(index, vectors, pool, nprobe, centre_norms(index))
    if pool > read and fine is not None:
        ids = fine.rank(vectors, ids, read)
    if rescore:
        sims, ids = rescored(vectors, ids, k + 1, fetch)
    hits = 0
    for q, (found, score) in enumerate(zip(ids, sims, strict=True)):
        mine = (found != q_ids[q]) & (found >= 0)
        found, score = found[mine][:k], score[mine][:k]
        true = np.isin(found, truth_ids[q][truth_ids[q] >= 0])
        if rescore:
            true |= score >= floor[q] - TIE
        hits += int(true.sum())
    return hits / max(1, int((truth_ids >= 0).sum()))


def without_own(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than the row's own id, -1 padded."""
    out = np.full((len(ids), k), -1, np.int64)
    for row, (found, me) in enumerate(zip(ids, own, strict=True)):
        others = found[(found != me) & (found >= 0)][:k]
        out[row, : len(others)] = others
    return out
