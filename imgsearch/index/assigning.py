"""Assigning rows to their nearest centre (an IVF's list): the bfloat16 product of every row
with every centre, the best candidates again in float32 (`Centres`), and the choice between it,
a tree of the centres (tree.CentreTree) and FAISS's float32 search (`assigner`). The
training's k-means (kmeans.py) and the adds (placing.py) assign alike.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .tree import GROUP_THREADS, CentreTree

log = logging.getLogger(__name__)

# Sample rows scored against every centroid at once: at most BLOCK_ROWS, and at most
# BLOCK_SCORES scores (16 MB in bfloat16, which stays in cache for the top-k after the
# product: at 16,384 lists, 512-row blocks took 6.9 us a row for the product where 4,096-row
# blocks took 14.9, 2 threads: an ad-hoc timing; bench/placing.py times the whole add).
BLOCK_ROWS = 4_096
BLOCK_SCORES = 512 * 16_384
# Assigning to at least GROUPED_FROM centres, the candidates come from the best of GROUPS
# groups of centres (Centres._best).
GROUPS = 128
GROUPED_FROM = 2_048
# Centres a row's bfloat16 scores put forward, compared again in float32 (the k-means
# training's and the adds' alike: index/placing.py). Without the offset below, 4 candidates put
# 5.3% of vectors in another list than FAISS's float32 scan (at most 0.0034 worse), 8 0.9%, 16
# 0.03%, the search the same either way; with it, 3 find FAISS's list for all but 1 in 200,000
# (bench/placing.py).
CANDIDATES = 3
# The bfloat16 product's scores are rounded to 8 significant bits: a step of 0.0039 near a
# row's best score (~0.84 on bench/scale.py's spectral rows), where the best two centres of
# 16,384 are a median 0.0049 apart, so many centres tie. Each row is given one more
# coordinate, minus an offset (the median best score of OFFSET_ROWS rows spread through the
# rows assigned together), and each centre a 1 there: the product is then the score minus the
# offset, whose best values lie near 0 and are rounded 8-16x finer (the offset's own rounding
# is the same for a row's every score). On the spectral rows and the 10M index's centres (an
# ad-hoc run, 60,000 rows), the float32 best was among 3 candidates for every row with the
# offset, among 4 for 99.885% without it; 30.0 us of CPU a row against 38.8 for 8 candidates
# without it.
OFFSET_ROWS = 256
# Under this many centres a row is compared with every one in float32 (one product, no second
# look): the bfloat16 pass and its second look cost more there (an ad-hoc timing: 3.5 us a row
# against 0.6 at 128 centres, equal at 1,024). A two-level training runs 20 of its 22
# iterations against ~128 centres: 1.44x faster at 10M (bench/kmeans.py --two-level-only).
FLOAT32_UNDER = 1_024


def assigner(
    centres: np.ndarray, bf16: bool, tree: bool, seed: int = 1234,
    group_threads: int | None = GROUP_THREADS,
) -> Centres | CentreTree | None:  # fmt: skip
    """What assigns rows to `centres`: a tree of them (its groups' products on
    `group_threads`) where `tree` and it is worth it (CentreTree.worth), else the bfloat16
    product where `bf16` (the CPU runs it natively), else None: FAISS's float32 search."""
    if tree:
        made = CentreTree(centres, seed, group_threads)
        if made.worth:
            return made
        log.info(
            "a tree of %d centres would compare rows with %.0f%% of them: %s instead",
            len(centres), 100 * made.share, "a bfloat16 product" if bf16 else "FAISS's search",
        )  # fmt: skip
    return Centres(centres) if bf16 else None


class Centres:
    """Centroids to assign rows to (`nearest`): float32, and bfloat16 for the first pass
    (from FLOAT32_UNDER centres; under it every score is float32 and there is one pass)."""

    def __init__(self, centres: np.ndarray, candidates: int = CANDIDATES) -> None:
        """`candidates`: how many best centres by bfloat16 are compared again in float32."""
        import torch

        self.candidates = candidates
        self.exact = torch.from_numpy(np.ascontiguousarray(centres, np.float32))
        k = len(centres)
        self.float32 = k < FLOAT32_UNDER
        # GROUPS groups of columns whose best scores pick the CANDIDATES (enough centres to
        # be worth it): the columns are filled up to a multiple of GROUPS with repeats of the
        # first centres.
        self.grouped = k >= GROUPED_FROM
        padded = -(-k // GROUPS) * GROUPS if self.grouped else k
        repeats = self.exact[np.arange(padded) % k] if padded > k else self.exact
        # The centres as the columns of a row's first product: float32 under FLOAT32_UNDER of
        # them (that product is then the only one), else bfloat16 with one more row of 1s for
        # the rows' offset (OFFSET_ROWS), zero-padded to a multiple of 8 rows.
        if self.float32:
            self.columns = repeats.T.contiguous()
        else:
            d = repeats.shape[1]
            self.columns = torch.zeros((-(-(d + 1) // 8) * 8, padded), dtype=torch.bfloat16)
            self.columns[:d] = repeats.T
            self.columns[d] = 1

    def __len__(self) -> int:
        return int(self.exact.shape[0])

    def nearest(self, rows: np.ndarray) -> np.ndarray:
        """Each float32 row's best centre by inner product (int64)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(rows, np.float32))
        out: np.ndarray = self.assign(x, x if self.float32 else x.to(torch.bfloat16)).numpy()
        return out

    def assign(self, rows: Any, low: Any) -> Any:
        """Each row's best centre (int64 tensor): the `candidates` best by the bfloat16
        product (`low`: the rows in bfloat16; scored minus their offset, OFFSET_ROWS), the
        best of those in float32 (bfloat16 scores tie: the first index would win every tie,
        and the lists grow uneven). Under FLOAT32_UNDER centres, the best by the float32
        product (`low` unused)."""
        import torch

        out = torch.empty(rows.shape[0], dtype=torch.int64)
        pick = min(self.candidates, len(self))  # a library of a few images has fewer lists
        block = max(256, min(BLOCK_ROWS, BLOCK_SCORES // len(self)))
        # One buffer for every block's scores: a fresh 16 MB a block is fresh pages from the
        # kernel each time (page faults: the product took 13.6 us a row instead of 6.4).
        shape = (min(block, rows.shape[0]), self.columns.shape[1])
        buffer = torch.empty(shape, dtype=self.columns.dtype)
        if not self.float32:  # each block's rows, their offset coordinate and zeros
            dim = rows.shape[1]
            lifted = torch.zeros((shape[0], self.columns.shape[0]), dtype=torch.bfloat16)
            lifted[:, dim] = -self._offset(low)
        for start in range(0, rows.shape[0], block):
            stop = min(start + block, rows.shape[0])
            if self.float32:
                scores = torch.mm(rows[start:stop], self.columns, out=buffer[: stop - start])
                out[start:stop] = scores.argmax(dim=1)
                continue
            lifted[: stop - start, :dim] = low[start:stop]
            scores = torch.mm(lifted[: stop - start], self.columns, out=buffer[: stop - start])
            cand = self._best(scores, pick) % len(self)
            sims = torch.bmm(self.exact[cand], rows[start:stop, :, None])[:, :, 0]
            out[start:stop] = cand.gather(1, sims.argmax(dim=1, keepdim=True))[:, 0]
        return out

    def _offset(self, low: Any) -> float:
        """The median best bfloat16 score of OFFSET_ROWS rows spread evenly through `low`
        (an import's batch may come sorted by folder: its first rows are not its typical)."""
        import torch

        dim = low.shape[1]
        if not len(low):
            return 0.0
        spread = low[:: max(1, len(low) // OFFSET_ROWS)][:OFFSET_ROWS]
        best = torch.mm(spread, self.columns[:dim]).amax(dim=1)
        return float(best.float().median())

    @staticmethod
    def _best(scores: Any, pick: int) -> Any:
        """The columns of each row's `pick` best scores. Over many centres: among the columns
        of the `pick` groups with the best maxima (they hold the `pick` best: a top-k over
        every score cost as much as the product, 9 us a row at 16,384 lists). Group q holds
        columns q, q + GROUPS, q + 2 * GROUPS, ...: their maxima are an element-wise max of
        contiguous rows (2.0 us a row, where contiguous groups took 3.5)."""
        import torch

        rows, width = scores.shape
        if width < GROUPED_FROM:
            return scores.topk(pick, dim=1).indices
        best = _column_max(scores.view(rows, -1, GROUPS)).topk(pick, dim=1).indices
        columns = (best[:, :, None] + GROUPS * torch.arange(width // GROUPS)).view(rows, -1)
        return columns.gather(1, scores.gather(1, columns).topk(pick, dim=1).indices)


def _column_max(x: Any) -> Any:
    """The max over dim 1 of a bfloat16 tensor (rows, n, m), as amax gives it, from its bits
    read as int16: they order non-negative values as the floats do and negative ones in
    reverse, so the max is the int16 max where that is not negative, else the int16 min (the
    negative nearest 0). amax converts every score to float32 first: 4.6 us a row of 16,384
    scores against 3.2 (one thread, ad hoc; aminmax, one pass, took 18.5; the whole choice of
    candidates 8.9 -> 7.5 us a row, bench/import_steps.py)."""
    import torch

    bits = x.view(torch.int16)
    high, low = bits.amax(dim=1), bits.amin(dim=1)
    return torch.where(high >= 0, high, low).view(torch.bfloat16)
