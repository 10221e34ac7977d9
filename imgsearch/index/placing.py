"""Adding to a fast-scan IVF index without FAISS's coarse scan: each vector's list chosen in
bfloat16 (assigning.Centres, the training's own assignment) or, from Policy.tree_from lists,
through a tree of the centres (tree.CentreTree, float32), and its codes packed into the lists
here.

FAISS adds to an IVF index by scanning every centroid in float32 for every vector (a GEMM):
at 16,384 lists of 512-d that is 106-137 us of CPU a row, most of an import's CPU. Where the
CPU runs bfloat16 natively (Policy.train_bf16) an add costs 48 on an Intel Xeon with AMX
(bench/placing.py: 2.9x less than FAISS's, with each row scored minus an offset,
assigning.OFFSET_ROWS; docs/BENCHMARKS.md); on a Zen 4 without AMX 140 by bfloat16 (before the
offset), 84 through the tree, 214 by FAISS (126 by bfloat16, 50 through the tree since
2026-12-06).
FAISS cannot take the lists from outside for a fast-scan index: IndexIVF.add_core and
add_sa_codes hand one unpacked code to BlockInvertedLists.add_entries, which copies whole
packed blocks from it (FAISS 1.15: reads past the code, corrupts the heap).
So the codes are made by FAISS (IndexIVF.encode_vectors, given the lists) and packed here into
32-code blocks: the fast-scan layout is a fixed permutation of a block's 4-bit sub-codes,
read once from the index's own CodePacker (`_layout`), applied with torch (no GIL held).
A batch's lists are one argsort; each list is handed to FAISS once (add_entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cpu import faiss_team
from .assigning import Centres, assigner
from .kmeans import NEVER
from .rotation import Coded
from .tree import GROUP_THREADS, CentreTree


@dataclass(frozen=True)
class Placer:
    """Fills empty copies of one trained fast-scan IVF template (`fill`)."""

    centres: Centres | CentreTree
    byte: Any  # int64 tensor (slots x M): the byte of a block each slot's sub-code goes to
    shift: Any  # uint8 tensor (slots x M): 0 (its low half) or 4 (its high half)
    slots: int  # codes a block holds (32)
    code_size: int  # bytes of one unpacked code (M / 2)
    coded: Coded | None = None  # a rotated template's coded directions (rotation.py)
    # The lists' order is L2's (a centred template, kmeans.around): each centre compared
    # with one more coordinate, minus half its squared length, each row with a 1 there.
    lifted: bool = False

    @classmethod
    def of(
        cls, template: Any, bf16: bool = True, tree_from: int = NEVER,
        group_threads: int | None = GROUP_THREADS,
    ) -> Placer | None:  # fmt: skip
        """A placer for copies of `template` (rows placed through a tree of the centres from
        `tree_from` lists where it is worth it, its groups' products on `group_threads`
        threads, None: the caller's team; else by a bfloat16 product where `bf16`), or None
        where FAISS adds them itself: without `bf16`, fewer lists than `tree_from` or a
        tree not worth it (assigning.assigner), other kinds than fast-scan PQ over a flat
        quantizer (inner product, or L2: a centred template's, `lifted`; not an exact index,
        IVF-Flat, an HNSW coarse quantizer of an earlier version), or an unknown block
        layout."""
        import faiss
        import torch

        if template is None:
            return None
        ivf = faiss.downcast_index(faiss.extract_index_ivf(template)) if _is_ivf(template) else None
        if not isinstance(ivf, faiss.IndexIVFFastScan):
            return None
        tree = ivf.nlist >= tree_from
        if not (tree or bf16):
            return None  # (a cheap answer before the centres are copied)
        if ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        quantizer = faiss.downcast_index(ivf.quantizer)
        if not isinstance(quantizer, faiss.IndexFlat) or quantizer.ntotal != ivf.nlist:
            return None
        lifted = quantizer.metric_type == faiss.METRIC_L2
        layout = _layout(ivf)
        if layout is None:
            return None
        vectors = faiss.rev_swig_ptr(quantizer.get_xb(), ivf.nlist * ivf.d)
        centres = np.array(vectors, np.float32).reshape(ivf.nlist, ivf.d)
        coded = Coded.of(template, int(ivf.M))  # rows placed unrotated, by these centres:
        if coded is not None:
            centres = coded.unrotated(centres)
        if lifted:  # x . c - |c|^2 / 2 ranks the centres as -|x - c|^2 does
            half = -0.5 * np.einsum("ij,ij->i", centres, centres)
            centres = np.ascontiguousarray(np.hstack([centres, half[:, None]]), np.float32)
        packer = ivf.get_CodePacker()
        with faiss_team():
            made = assigner(centres, bf16, tree, group_threads=group_threads)
        if made is None:
            return None
        at = np.argsort(layout).reshape(packer.nvec, -1)  # each (slot, sub-code)'s 4 bits
        byte, shift = torch.from_numpy(at // 2), torch.from_numpy((at % 2 * 4).astype(np.uint8))
        return cls(made, byte, shift, packer.nvec, packer.code_size, coded, lifted)

    def fill(
        self, batch: Any, ids: np.ndarray, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add `vectors` under `ids` to `batch`, an empty copy of the template; return the
        lists filled (ascending) and how many codes each got."""
        import faiss

        ivf = faiss.extract_index_ivf(batch)
        if ivf.ntotal:
            raise ValueError("Placer.fill adds to an empty copy of its template only")
        n = len(vectors)
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        x = np.ascontiguousarray(vectors, np.float32)
        with faiss_team():  # the team add_with_ids would have used
            lists = self.centres.nearest(_lift(x) if self.lifted else x)
            if self.coded is not None:
                x = self.coded.encodable(x)
            codes = np.empty((n, self.code_size), np.uint8)
            x_, lists_, codes_ = (faiss.swig_ptr(a) for a in (x, lists, codes))
            ivf.encode_vectors(n, x_, lists_, codes_, False)  # (without the list numbers)
            order = np.argsort(lists, kind="stable")
            lists, codes = lists[order], codes[order]
            ids = np.ascontiguousarray(ids[order], np.int64)
            heads = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]])
            counts = np.diff(np.r_[heads, n])
            blocks = (counts + self.slots - 1) // self.slots
            packed = self._pack(codes, heads, counts, blocks)
        invlists: Any = ivf.invlists
        at = np.r_[0, np.cumsum(blocks)[:-1]]
        for head, count, first in zip(heads.tolist(), counts.tolist(), at.tolist(), strict=True):
            invlists.add_entries(
                int(lists[head]), count, faiss.swig_ptr(ids[head:]), faiss.swig_ptr(packed[first])
            )
        ivf.ntotal += n
        batch.ntotal = ivf.ntotal
        return lists[heads].astype(np.int64), counts

    def _pack(
        self, codes: np.ndarray, heads: np.ndarray, counts: np.ndarray, blocks: np.ndarray
    ) -> np.ndarray:
        """Codes sorted by list, packed: each list's codes into its own whole blocks (the last
        one zero-padded), the lists' blocks one after another: (blocks, block bytes). The codes
        of one slot are written together (one index_put_: a row of blocks by a row of the
        slot's bytes); a byte's low half belongs to one slot, its high half to another, so the
        slots whose sub-codes all go to low halves write their bytes first and the others add
        theirs in (an import's batch, bench/import_steps.py: 2.04 us a row on one thread, 1.29
        on two, where one scatter of every sub-code took 4.52 and 3.40). An import's batch puts
        one or two codes in most lists, so its blocks are mostly padding, never gathered."""
        import torch

        n, m, size = len(codes), 2 * self.code_size, self.code_size * self.slots
        raw = torch.from_numpy(codes)
        subs = torch.empty((n, m), dtype=torch.uint8)
        subs[:, 0::2] = raw & 15  # sub-code 2j in the low half of byte j (FAISS's order)
        subs[:, 1::2] = raw >> 4
        within = np.arange(n) - np.repeat(heads, counts)
        first = np.repeat(np.r_[0, np.cumsum(blocks)[:-1]], counts) + within // self.slots
        block, slot = torch.from_numpy(first), within % self.slots
        out = torch.zeros((int(blocks.sum()), size), dtype=torch.uint8)
        low = (self.shift == 0).all(dim=1).tolist()
        for s in sorted(np.unique(slot).tolist(), key=lambda s: not low[s]):
            rows = torch.from_numpy(np.flatnonzero(slot == s))
            where = (block[rows][:, None], self.byte[s][None, :])
            if low[s]:
                out.index_put_(where, subs[rows])
            else:
                out.index_put_(where, subs[rows] << self.shift[s], accumulate=True)
        return np.asarray(out.numpy())


class Placers:
    """The placer of the newest template a caller asked for, made once a template (its
    centroids are copied out: 50 MB at 16,384 x 512-d), or None where FAISS adds rows itself
    (`places` false: the policy leaves the lists to FAISS)."""

    def __init__(self, places: bool, bf16: bool, tree_from: int) -> None:
        self.places, self.bf16, self.tree_from = places, bf16, tree_from
        self._made: tuple[Any, Placer | None] = (None, None)  # (template, its placer)

    def __call__(self, template: Any) -> Placer | None:
        if not self.places or template is None:
            return None
        if self._made[0] is not template:
            self._made = (template, Placer.of(template, self.bf16, self.tree_from))
        return self._made[1]


def _layout(ivf: Any) -> np.ndarray | None:
    """Where a block's codes go: for each 4-bit position of a packed block (low half of each
    byte first), the slot * M + sub-code it holds, read off the CodePacker by packing blocks
    whose every sub-code holds 4 bits of its own position; None unless a permutation."""
    import faiss

    packer = ivf.get_CodePacker()
    slots, code_size, block = packer.nvec, packer.code_size, packer.block_size
    m = 2 * code_size
    if block * 2 != slots * m:
        return None
    where = np.arange(slots * m, dtype=np.int64)
    found = np.zeros(2 * block, np.int64)
    for shift in range(0, max(4, int(where.max()).bit_length() + 3), 4):
        subs = ((where >> shift) & 15).astype(np.uint8).reshape(slots, m)
        flat = np.ascontiguousarray(subs[:, 0::2] | (subs[:, 1::2] << 4))
        out = np.zeros(block, np.uint8)
        packer.pack_all(faiss.swig_ptr(flat), faiss.swig_ptr(out))
        halves = np.stack([out & 15, out >> 4], axis=1).reshape(-1).astype(np.int64)
        found |= halves << shift
    if not np.array_equal(np.sort(found), where):
        return None
    return found


def _lift(x: np.ndarray) -> np.ndarray:
    """Rows with one more coordinate, 1 (Placer.lifted)."""
    return np.ascontiguousarray(np.hstack([x, np.ones((len(x), 1), x.dtype)]), np.float32)


def _is_ivf(index: Any) -> bool:
    import faiss

    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True
