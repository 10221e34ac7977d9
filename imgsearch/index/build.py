"""Building a base: from the store (train on a sample, stream every vector in, tune nprobe), or
by compaction (`fold`: the current base less its deletions, plus the recent segment).

Everything is read from SQLite in chunks (never the whole library twice in memory). The
recall@10 ground truth of the tuning queries (stored vectors; each query's own id is left out of
both the truth and the answers, so a query never scores by finding itself) is accumulated
exactly in the same pass that adds the vectors, so tuning costs no second read of the library.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import fine as F
from . import idsets, kmeans
from . import policy as P
from .base import READ_INTO_RAM, Base, BaseMeta, emptied, for_adding, ivf
from .codes import Encoded, encoded, merge_into
from .placing import Placer
from .segments import Fetch, exact_among, hnsw, merge, search_params

log = logging.getLogger(__name__)


class Source(Protocol):
    """The store as the index sees it: the truth, read in chunks."""

    def generation(self) -> int:
        """The database generation (bumped by every write)."""

    def ids(self) -> np.ndarray:
        """Sorted ids of the present images."""

    def count(self) -> int:
        """How many images are present (a counter: nothing is read)."""

    def deleted_since(self, generation: int) -> np.ndarray | None:
        """Sorted ids taken out by writes after `generation` (None: not known that far back)."""

    def forget_deletions(self, generation: int) -> None:
        """Drop what the deletions log holds up to `generation` (a saved base holds it)."""

    def chunks(self, since_generation: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of present rows written after `since_generation`."""

    def vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Exact (ids, float32 vectors) of those ids that are present."""


class Stopped(Exception):
    """The build was abandoned (the daemon is stopping)."""


def build(
    spec: P.Spec, source: Source, model_id: str, dim: int, policy: P.Policy, stop: threading.Event,
    folder: Path | None = None,
) -> Base:  # fmt: skip
    """A new base of kind `spec` holding every present vector (as of the generation it says);
    quantized codes get fine codes (fine.py) in a new file in `folder`, if given."""
    import faiss

    started = time.monotonic()
    generation = source.generation()  # rows written later are replayed on top of the base
    present = source.ids()
    rng = np.random.default_rng(P.SEED)
    index: Any = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    template, fine = None, None
    if spec.kind != "exact" and len(present):
        sample = np.sort(rng.choice(present, P.train_size(spec.lists, len(present)), replace=False))
        _, train = source.vectors(sample.tolist())
        if not len(train):  # every sampled row removed meanwhile: the worker tries again
            raise RuntimeError("the rows sampled for training are no longer stored")
        kmeans.train(
            index, train, policy.train_bf16, P.SEED, policy.two_level_min_lists, policy.tree_from
        )
        if spec.quantized and folder is not None:
            fine = F.Fine.train(train, folder)
        del train
        for_adding(index)  # every copy adds (encodes) at HNSW_ADD_EF
        template = faiss.clone_index(index)  # trained, empty: what recent segments copy
    placer = Placer.of(template, policy.train_bf16, policy.tree_from) if policy.places else None
    picked = np.sort(rng.choice(present, min(P.TUNE_QUERIES, len(present)), replace=False))
    q_ids, queries = source.vectors(picked.tolist())
    truth = (np.full((len(q_ids), 0), -np.inf, np.float32), np.zeros((len(q_ids), 0), np.int64))
    seen: list[np.ndarray] = []
    for ids, vectors in source.chunks():
        if stop.is_set():
            raise Stopped
        if placer is None:
            index.add_with_ids(vectors, ids)
        else:
            merge_into(index, encoded(template, ids, vectors, placer))
        if fine is not None:
            fine.put(ids, vectors)
        seen.append(ids)
        if spec.kind != "exact" and len(q_ids):
            found = exact_among(queries, P.RECALL_K + 1, ids, vectors)
            truth = merge([truth, found], P.RECALL_K + 1)
    all_ids = np.sort(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
    nprobe, recall, rescore = 0, 1.0, 0
    if spec.kind != "exact" and len(q_ids):
        others = _without(truth[1], q_ids, P.RECALL_K)
        nprobe, recall, rescore = tune(
            index, spec, (q_ids, queries), others, source, policy, stop, fine
        )
    meta = BaseMeta(
        model_id, dim, spec.kind, spec.factory, generation, len(all_ids), len(all_ids),
        time.time(), nprobe, recall, rescore, len(all_ids), fine.name if fine else "",
        policy.target_recall,
    )  # fmt: skip
    log.info(
        "index built: %s, %d vectors in %.1fs (nprobe %d, recall@10 %.3f, rescore %d)",
        spec.factory, len(all_ids), time.monotonic() - started, nprobe, recall, rescore,
    )  # fmt: skip
    return Base(index, all_ids, meta, template, fine)


def fold(
    old: Base, saved: Path | None, dead: np.ndarray, recent_ids: np.ndarray, frozen: Any,
    generation: int, placer: Placer | None = None,
) -> Base:  # fmt: skip
    """A compacted copy of `old` (read again from `saved`, its index file, when there is one
    and the base in memory is memory-mapped from it; a base held in RAM is copied: no 1.15 GB
    read at 10M beside the searches' reads): `dead` ids dropped, the recent segment (`frozen`:
    its codes, or (ids, vectors), encoded by `placer` if made for old's template) folded in."""
    import faiss

    mapped = saved is not None and old.meta.kind not in READ_INTO_RAM
    index = faiss.read_index(str(saved)) if mapped else faiss.clone_index(old.index)
    for_adding(index)
    template = old.template
    if template is None and old.meta.kind != "exact":
        template, placer = emptied(index), None  # a base of an earlier version: its first
    drop = idsets.union(dead, recent_ids)
    if len(drop):
        index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))
    if not isinstance(frozen, Encoded) and len(recent_ids) and template is not None:
        frozen = encoded(template, frozen[0], frozen[1], placer)  # an exact segment's
    if isinstance(frozen, Encoded):
        merge_into(index, frozen)  # (appending after remove_ids is wrong for fast-scan lists)
    elif len(recent_ids):
        index.add_with_ids(frozen[1], frozen[0])  # an exact base
    ids = idsets.union(np.setdiff1d(old.ids, drop, assume_unique=True), recent_ids)
    meta = replace(old.meta, generation=generation, count=len(ids))
    return Base(index, ids, meta, template, old.fine)  # (the same fine codes: nothing moves)


def with_fine(base: Base, source: Source, folder: Path, stop: threading.Event) -> Base:
    """`base` with fine codes, in a new file in `folder`, for every stored vector (a base of
    an earlier version, or one whose file was lost; its tuning is the caller's). Rows written
    meanwhile are logged, and the swap replays them with their codes."""
    started = time.monotonic()
    present = base.ids
    rng = np.random.default_rng(P.SEED)
    count = P.train_size(int(getattr(ivf(base.index), "nlist", 1)), len(present))
    _, sample = source.vectors(np.sort(rng.choice(present, count, replace=False)).tolist())
    fine = F.Fine.train(sample, folder)
    for ids, vectors in source.chunks():
        if stop.is_set():
            raise Stopped
        fine.put(ids, vectors)
    log.info("fine codes written for %d vectors in %.1fs", len(present), time.monotonic() - started)
    return replace(base, fine=fine, meta=replace(base.meta, fine=fine.name))


def retune(base: Base, source: Source, policy: P.Policy, stop: threading.Event) -> Base:
    """`base` with nprobe and re-scoring tuned again for the size it has now (an index trained
    early for an import's final size was tuned on the rows it held then) or for the policy's
    recall target (--recall changed): the same queries as a build, the ground truth streamed
    from the store."""
    started = time.monotonic()
    spec = P.Spec(base.meta.kind, base.meta.factory, int(getattr(ivf(base.index), "nlist", 0)))
    rng = np.random.default_rng(P.SEED)
    present = base.ids  # what the base holds (rows written since are replayed on top)
    picked = np.sort(rng.choice(present, min(P.TUNE_QUERIES, len(present)), replace=False))
    q_ids, queries = source.vectors(picked.tolist())
    truth = (np.full((len(q_ids), 0), -np.inf, np.float32), np.zeros((len(q_ids), 0), np.int64))
    for ids, vectors in source.chunks():
        if stop.is_set():
            raise Stopped
        keep = base.contains(ids)
        found = exact_among(queries, P.RECALL_K + 1, ids[keep], vectors[keep])
        truth = merge([truth, found], P.RECALL_K + 1)
    others = _without(truth[1], q_ids, P.RECALL_K)
    nprobe, recall, rescore = tune(
        base.index, spec, (q_ids, queries), others, source, policy, stop, base.fine
    )
    meta = replace(
        base.meta, nprobe=nprobe, recall=recall, rescore=rescore, tuned_count=len(present),
        target=policy.target_recall,
    )  # fmt: skip
    log.info(
        "index re-tuned at %d vectors in %.1fs: nprobe %d -> %d, rescore %d -> %d, recall@10 %.3f",
        len(present), time.monotonic() - started, base.meta.nprobe, nprobe, base.meta.rescore,
        rescore, recall,
    )  # fmt: skip
    return replace(base, meta=meta)


def tune(
    index: Any, spec: P.Spec, queries: tuple[np.ndarray, np.ndarray], truth: np.ndarray,
    source: Source, policy: P.Policy, stop: threading.Event | None = None,
    fine: F.Fine | None = None,
) -> tuple[int, float, int]:  # fmt: skip
    """(nprobe, recall, rescore) for `index`, chosen by `choose` from recall@10 of the tuning
    queries against `truth`, each (depth, nprobe) searched at most once; candidates ranked by
    `fine` codes first where given, as searches do."""
    searches = [0]

    @cache
    def recall_at(rescore: int, nprobe: int) -> float:
        searches[0] += 1
        return _recall(index, queries, truth, source, stop, rescore, nprobe, fine)

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
    pool of fine.POOL x k candidates are re-scored: the cost model counts the rows read).

    Depths are searched deepest first. A shallower depth re-scores the first of the same
    candidates, so it needs at least the nprobe the deeper one needed, and it can win only
    below the nprobe where it costs as much as the best pair so far: one search there says
    whether it can, and a bisection between the two bounds finds its nprobe. (Searched
    shallowest first, each depth doubled nprobe from 1, up to all the lists for a depth that
    cannot reach the goal: ~15 searches wasted per such depth, tests/test_tuning.py.)"""
    goal = min(1.0, target + P.tune_margin(target))

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
        nprobe, recall, low = _smallest(at, spec.lists, goal)
        under[goal] = max(under[goal], low)
        if recall < goal:
            nprobe, recall, low = _smallest(at, spec.lists, target)
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


def _smallest(recall_at: Callable[[int], float], lists: int, goal: float) -> tuple[int, float, int]:
    """Doubling, then bisection, for the smallest nprobe meeting the goal (within
    1/TUNE_PRECISION of it: a few percent more lists than needed, half the searches):
    (nprobe, its recall, the largest nprobe seen under the goal)."""
    low, high = 0, 1
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


def _recall(
    index: Any,
    queries: tuple[np.ndarray, np.ndarray],
    truth: np.ndarray,
    source: Source,
    stop: threading.Event | None,
    rescore: int,
    nprobe: int,
    fine: F.Fine | None = None,
) -> float:
    if stop is not None and stop.is_set():
        raise Stopped
    k = P.RECALL_K
    q_ids, vectors = queries
    params = search_params(True, None, nprobe, hnsw(index))
    read = (k + 1) * max(1, rescore)
    pool = F.pool(k + 1, read) if rescore and fine is not None else read
    _, ids = index.search(vectors, pool, params=params)
    if pool > read and fine is not None:
        ids = fine.rank(vectors, ids, read)
    if rescore:
        ids = rescored(vectors, ids, k + 1, source.vectors)[1]
    ids = _without(ids, q_ids, k)
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(ids, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def _without(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than the row's own id, -1 padded."""
    out = np.full((len(ids), k), -1, np.int64)
    for row, (found, me) in enumerate(zip(ids, own, strict=True)):
        others = found[(found != me) & (found >= 0)][:k]
        out[row, : len(others)] = others
    return out


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
