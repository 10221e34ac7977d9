"""Codes moved between copies of one trained IVF index: the coded recent segment and compaction.

A base's `template` (its trained index before any vector was added) is copied to make the
recent segment, and to encode each batch of adds off the lock (a bulk import encodes a batch
ahead, before its rows are written: `Precoded`, relabelled with their ids once they have
them); `merge_into` then moves codes and ids from one copy into another, nothing re-encoded
(FAISS's `merge_from`, with a guard for a FAISS 1.15 fast-scan bug). Also the way a lone
query scans a base's lists and a recent segment's (`lone_view`, `lone_scans`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .fine import Fine
from .placing import Placer
from .rotation import transform_of

# FAISS's fast-scan IVF search one query at a time (its `implem` 11: one lookup table for every
# list, a reservoir of the best k). Its default for k > 20 (13) packs a lookup table a probed
# list, allocated and filled again for each: on a saved 9M base (16,384 lists, a pool of
# 2,000) the daemon's split scan took 0.935x / 0.955x as long paired at 818 / 1,424 lists
# probed (3.01 against 3.22, 5.02 against 5.32 ms p50; bench/scan_cost.py --implem 0 11).
# For many queries at once (a tuning's) the default shares each list's read among them: 40
# queries on two threads took 209 ms against 270 at 1,424 lists, so the base keeps it.
LONE_IMPLEM = 11


@dataclass
class Encoded:
    """Codes ready to be moved into another index trained the same way (merge_into)."""

    index: Any  # an IVF index
    lists: np.ndarray | None = None  # its non-empty lists, if known
    sizes: np.ndarray | None = None  # and their sizes, if known
    offset: int = 0  # added to every id as the codes are moved (merge_into): see relabel


@dataclass
class Precoded:
    """Rows encoded ahead of their write (their ids unknown yet: codes under positions
    0..count-1, see relabel) by a copy of `template`; usable by a segment of that template."""

    template: Any
    codes: Encoded
    count: int
    vectors: np.ndarray | None = None  # the float32 rows encoded, in order
    fine: Fine | None = None  # the fine codes' quantizer that encoded them too
    fine_codes: np.ndarray | None = None  # and its codes, in order


def encoded(
    template: Any, ids: np.ndarray, vectors: np.ndarray, placer: Placer | None = None
) -> Encoded:
    """`vectors` encoded by a copy of `template` (a trained, empty IVF index); by `placer`
    (made for this template: lists chosen in bfloat16) where given, else by FAISS."""
    batch = empty_copy(template)
    if placer is not None:  # it knows the lists it filled: no call a list to find them
        return Encoded(batch, *placer.fill(batch, ids, vectors))
    batch.add_with_ids(vectors, ids)
    return Encoded(batch, nonempty(batch))


def empty_copy(template: Any) -> Any:
    """An empty copy of `template` (a trained IVF index). A fast-scan PQ one over inner
    product shares the template's coarse quantizer (made by FAISS's constructor, which keeps a
    reference to it; the template is kept too, as the quantizer's owner): a full copy
    (faiss.clone_index) copies the quantizer, 82 MB at 16,000 x 1280-d, 38 ms of the 50 that
    encoding one added image took (13.5 of 24 at 16,384 x 512-d)."""
    import faiss

    transform = transform_of(template)  # a rotated template: its inner index copied, wrapped
    batch = _bare_like(template.index if transform is not None else template)
    if batch is None:
        return faiss.clone_index(template)
    batch.referenced_objects.append(template)
    if transform is None:
        return batch
    wrapped: Any = faiss.IndexPreTransform(transform, batch)  # (the template owns the transform)
    wrapped.referenced_objects.append(template)
    return wrapped


def lone_view(index: Any) -> Any | None:
    """The fast-scan IVF lists of `index` (a base: rotated or not) seen through another FAISS
    index that scans them for one query at a time (`LONE_IMPLEM`), their codes shared, not
    copied; None for an index of another kind. Searches of one query search this view with
    the base's coarse assignment (in its own space), tuning batches the base itself."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    view = _bare_like(ivf)
    if view is None:
        return None
    view.replace_invlists(ivf.invlists, False)  # (the base owns them; kept alive below)
    view.ntotal, view.implem = ivf.ntotal, LONE_IMPLEM
    view.referenced_objects.append(index)
    return view


def lone_scans(index: Any) -> None:
    """Have a coded recent segment (a copy of a base's template: rotated or not) scan its
    lists as `lone_view` does: only searches read it, one or a few queries at a time, and its
    lists are short (at most DELTA_CAP rows over the base's lists), so a lookup table packed a
    list is most of its scan. Any other index is left as it is."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return
    if isinstance(ivf, faiss.IndexIVFFastScan):
        ivf.implem = LONE_IMPLEM


def _bare_like(index: Any) -> Any | None:
    """A new, empty fast-scan PQ index trained as `index` (an IndexIVFPQFastScan over inner
    product), sharing its coarse quantizer; None for any other kind or layout."""
    import faiss

    ivf: Any = faiss.downcast_index(index)
    if type(ivf) is not faiss.IndexIVFPQFastScan or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    bare: Any = faiss.IndexIVFPQFastScan(
        ivf.quantizer, ivf.d, ivf.nlist, ivf.M, ivf.nbits, ivf.metric_type, ivf.bbs
    )
    bare.pq = ivf.pq  # the trained codebooks (a copy)
    bare.by_residual, bare.is_trained, bare.nprobe = ivf.by_residual, True, ivf.nprobe
    bare.implem, bare.qbs, bare.skip = ivf.implem, ivf.qbs, ivf.skip
    if bare.code_size != ivf.code_size or bare.M2 != ivf.M2:
        return None
    return bare


def copied(source: Encoded) -> Encoded:
    """A copy of `source` (its codes, ids, and the template's quantizer)."""
    import faiss

    return Encoded(faiss.clone_index(source.index), source.lists, source.sizes, source.offset)


def relabel(source: Encoded, ids: np.ndarray) -> None:
    """Give the codes of `source`, encoded under their positions 0..n-1 (before the rows had
    ids), the ids `ids[position]`, in place. Consecutive ids (the new rows of a batch, as
    SQLite numbers them) are only an offset, added as the codes are moved (FAISS's
    merge_from adds it): no Python step a list (~12,000 lists a 20,000-row batch)."""
    import faiss

    if source.offset:
        raise ValueError("codes relabelled twice")
    if len(ids) and int(ids[-1]) - int(ids[0]) == len(ids) - 1 and (np.diff(ids) == 1).all():
        source.offset = int(ids[0])
        return

    lists: Any = faiss.extract_index_ivf(source.index).invlists
    todo = nonempty(source.index) if source.lists is None else source.lists
    sizes = source.sizes
    if sizes is None:
        sizes = np.array([lists.list_size(i) for i in todo.tolist()], np.int64)
    for i, size in zip(todo.tolist(), sizes.tolist(), strict=True):
        stored = faiss.rev_swig_ptr(lists.get_ids(i), size)
        stored[:] = ids[stored]


def nonempty(index: Any) -> np.ndarray:
    """The inverted lists of an IVF index that hold something."""
    import faiss

    lists: Any = faiss.extract_index_ivf(index).invlists
    return np.flatnonzero([lists.list_size(i) for i in range(lists.nlist)])


def merge_into(target: Any, source: Encoded) -> None:
    """Move every code and id of `source` into `target` (IVF, the same quantizer and codes:
    both copies of one template), nothing re-encoded.

    FAISS's IndexIVF.merge_from does it, but in FAISS 1.15 a fast-scan list (BlockInvertedLists)
    whose length is a non-zero multiple of its block size *in bytes* is appended to by a
    whole-block copy that writes past the list's end (heap corruption); those lists are
    appended here a code at a time through the index's CodePacker. (Appending with
    add_with_ids after remove_ids is wrong too, in that version: codes are OR-ed into the
    stale slots that removal leaves; merging is not.)"""
    import faiss

    into: Any = faiss.extract_index_ivf(target)
    out: Any = faiss.extract_index_ivf(source.index)
    lists = faiss.downcast_InvertedLists(into.invlists)
    if isinstance(lists, faiss.BlockInvertedLists):  # type: ignore[attr-defined]
        src = faiss.downcast_InvertedLists(out.invlists)
        packer = into.get_CodePacker()
        todo = nonempty(source.index) if source.lists is None else source.lists
        for i in todo.tolist():
            size = lists.list_size(i)
            if size and size % lists.block_size == 0:
                moved = _append_packed(lists, src, i, packer, source.offset)
                into.ntotal += moved
                out.ntotal -= moved
    into.merge_from(out, source.offset)
    # (A rotated index's IndexPreTransform keeps a count of its own.)
    target.ntotal, source.index.ntotal = into.ntotal, out.ntotal


def _append_packed(into: Any, src: Any, i: int, packer: Any, offset: int) -> int:
    """List i of `src` appended to list i of `into` (BlockInvertedLists), a code at a time,
    its ids plus `offset`."""
    import faiss

    at, n = into.list_size(i), src.list_size(i)
    into.resize(i, at + n)  # new blocks come zero-filled
    moved = faiss.rev_swig_ptr(src.get_ids(i), n)
    faiss.rev_swig_ptr(into.get_ids(i), at + n)[at:] = moved + offset if offset else moved
    code = np.zeros(packer.code_size, np.uint8)
    source, dest = src.get_codes(i), into.get_codes(i)
    for j in range(n):
        packer.unpack_1_c(source, j, faiss.swig_ptr(code))
        packer.pack_1_c(faiss.swig_ptr(code), at + j, dest)
    src.resize(i, 0)
    return int(n)
