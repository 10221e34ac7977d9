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
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import fine as F
from . import idsets, kmeans, rotation
from . import policy as P
from .base import READ_INTO_RAM, Base, BaseMeta, emptied, for_adding, ivf
from .coarse import centred
from .codes import Encoded, encoded, merge_into
from .hits import exact_among, merge
from .placing import Placer
from .stopping import Stopped, check
from .tuning import tune, without_own

log = logging.getLogger(__name__)

SAMPLE_READ = 32_768  # rows of a training's sample read at a time (`sampled`)


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


def build(
    spec: P.Spec, source: Source, model_id: str, dim: int, policy: P.Policy, stop: threading.Event,
    folder: Path | None = None, tune_queries: int = P.TUNE_QUERIES,
) -> Base:  # fmt: skip
    """A new base of kind `spec` holding every present vector (as of the generation it says),
    tuned on `tune_queries` stored vectors; quantized codes get fine codes (fine.py) in a new
    file in `folder`, if given."""
    import faiss

    started = time.monotonic()
    generation = source.generation()  # rows written later are replayed on top of the base
    present = source.ids()
    rng = np.random.default_rng(P.SEED)
    factory, rotated = rotation.factory_of(spec.factory)
    index: Any = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    template, fine = None, None
    if spec.kind != "exact" and len(present):
        sample = np.sort(rng.choice(present, P.train_size(spec.lists, len(present)), replace=False))
        train = sampled(source, sample, stop)
        if not len(train):  # every sampled row removed meanwhile: the worker tries again
            raise RuntimeError("the rows sampled for training are no longer stored")
        lists = kmeans.train(
            index, train, policy.train_bf16, P.SEED, policy.two_level_min_lists, policy.tree_from,
            codes=not rotated, stop=stop, centred=policy.centred,
        )  # fmt: skip
        fitted = rotation.fit(index, train, lists) if rotated else None
        share = fitted.share(rotation.coded(index)) if fitted else 1.0
        if share < rotation.MIN_CODED_SHARE:  # residuals that vary evenly
            fitted = None  # (its residuals: 64 MB at 512-d, not kept through the codes' training)
            spec, index = _unrotated(spec, index, train, dim, share)
        elif rotated:
            index = rotation.train(index, train, lists, fitted)
        del fitted
        if spec.quantized and folder is not None:
            fine = F.Fine.train(train, folder)
        del train
        for_adding(index)  # every copy adds (encodes) at HNSW_ADD_EF
        template = faiss.clone_index(index)  # trained, empty: what recent segments copy
    # (an import waits at the hold's bound while a base is built: the CPU is the build's)
    placer = None
    if policy.places:
        placer = Placer.of(template, policy.train_bf16, policy.tree_from, group_threads=None)
    picked = np.sort(rng.choice(present, min(tune_queries, len(present)), replace=False))
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
        others = without_own(truth[1], q_ids, P.RECALL_K)
        nprobe, recall, rescore = tune(
            index, spec, (q_ids, queries), others, source.vectors, policy, stop, fine
        )
    meta = BaseMeta(
        model_id, dim, spec.kind, spec.factory, generation, len(all_ids), len(all_ids),
        time.time(), nprobe, recall, rescore, len(all_ids), fine.name if fine else "",
        policy.target_recall, tune_queries, P.tuning_goal(policy.target_recall),
        centred(index),
    )  # fmt: skip
    log.info(
        "index built: %s, %d vectors in %.1fs (nprobe %d, recall@10 %.3f, rescore %d)",
        spec.factory, len(all_ids), time.monotonic() - started, nprobe, recall, rescore,
    )  # fmt: skip
    return Base(index, all_ids, meta, template, fine)


def sampled(source: Source, ids: np.ndarray, stop: threading.Event) -> np.ndarray:
    """The stored vectors of `ids` (those still present), read SAMPLE_READ at a time with a
    stop checked between: a training's sample is 327,680 random rows, which took 19 s to read
    from the 9M library (ad hoc, docs/BENCHMARKS.md), longer than a shutdown waits."""
    parts = []
    for first in range(0, len(ids), SAMPLE_READ):
        check(stop)
        parts.append(source.vectors(ids[first : first + SAMPLE_READ].tolist())[1])
    full = [p for p in parts if len(p)]
    return np.concatenate(full) if full else np.zeros((0, 0), np.float32)


def _unrotated(
    spec: P.Spec, index: Any, sample: np.ndarray, dim: int, share: float
) -> tuple[P.Spec, Any]:
    """`spec` unrotated (policy.unrotated) and an index of it over the lists of `index` (the
    k-means' centres, trained), its codes trained on `sample` (FAISS trains only the codes of
    an index whose quantizer holds its centres). `share`: rotation.coded_share's, logged."""
    import faiss

    plain = P.unrotated(spec, dim)
    made: Any = faiss.index_factory(dim, plain.factory, faiss.METRIC_INNER_PRODUCT)
    lists: Any = faiss.extract_index_ivf(index)
    kmeans.copy_lists(lists, faiss.extract_index_ivf(made))
    made.train(np.ascontiguousarray(sample, np.float32))
    log.info(
        "codes on the residuals' first directions would keep %.0f%% of their variance (under "
        "%.0f%%): %s instead of %s", 100 * share, 100 * rotation.MIN_CODED_SHARE, plain.factory,
        spec.factory,
    )  # fmt: skip
    return plain, made


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


def still_stored(base: Base, source: Source) -> np.ndarray:
    """The base's ids the store still has: tuning queries and training samples drawn from
    its removed rows found no vector (all removed: every try failed, and no job behind it
    ran)."""
    ids: np.ndarray = base.ids[idsets.within(base.ids, source.ids())]
    return ids


def with_fine(base: Base, source: Source, folder: Path, stop: threading.Event) -> Base:
    """`base` with fine codes, in a new file in `folder`, for every stored vector (a base of
    an earlier version, or one whose file was lost; its tuning is the caller's). Rows written
    meanwhile are logged, and the swap replays them with their codes."""
    started = time.monotonic()
    present = still_stored(base, source)
    if not len(present):
        raise RuntimeError("no stored vector of the base left to train fine codes on")
    rng = np.random.default_rng(P.SEED)
    count = P.train_size(int(getattr(ivf(base.index), "nlist", 1)), len(present))
    sample = sampled(source, np.sort(rng.choice(present, count, replace=False)), stop)
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
    present = still_stored(base, source)  # (rows written since are replayed on top)
    if not len(present):
        return base  # nothing to ask (the compaction before it keeps only what is stored)
    picked = np.sort(rng.choice(present, min(P.TUNE_QUERIES, len(present)), replace=False))
    q_ids, queries = source.vectors(picked.tolist())
    truth = (np.full((len(q_ids), 0), -np.inf, np.float32), np.zeros((len(q_ids), 0), np.int64))
    for ids, vectors in source.chunks():
        if stop.is_set():
            raise Stopped
        keep = base.contains(ids)
        found = exact_among(queries, P.RECALL_K + 1, ids[keep], vectors[keep])
        truth = merge([truth, found], P.RECALL_K + 1)
    others = without_own(truth[1], q_ids, P.RECALL_K)
    nprobe, recall, rescore = tune(
        base.index, spec, (q_ids, queries), others, source.vectors, policy, stop, base.fine
    )
    meta = replace(
        base.meta, nprobe=nprobe, recall=recall, rescore=rescore, tuned_count=len(present),
        target=policy.target_recall, tune_queries=P.TUNE_QUERIES,
        aim=P.tuning_goal(policy.target_recall),
    )  # fmt: skip
    log.info(
        "index re-tuned at %d vectors in %.1fs: nprobe %d -> %d, rescore %d -> %d, recall@10 %.3f",
        len(present), time.monotonic() - started, base.meta.nprobe, nprobe, base.meta.rescore,
        rescore, recall,
    )  # fmt: skip
    return replace(base, meta=meta)
