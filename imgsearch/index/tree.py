"""Each row's nearest centre through a two-level tree of the centres, in float32: the centres
are grouped by their own k-means into ~2 sqrt(k) groups; a row is compared with the groups'
means, then with the members of its PROBES best groups only.

Where the CPU has no AMX, comparing every row with every centre (assigning.Centres: a bfloat16
product, the best candidates again in float32) is most of an import's CPU: at 16,000 lists
57 us a row on two Zen 4 cores (AVX512-BF16 at ~300 GFLOP/s). The tree compares a row with
~2,700 of 16,000 centres (its best 16 of 128 groups; the groups are uneven and the popular
ones big) in float32, so the scores it compares are exact: the nearest centre for 99.4% of
rows, and otherwise one within a mean 0.00013 of it; a whole add (list, codes, packing) 84
CPU-us a row against 140 by the bfloat16 product and 214 by FAISS, the same recall
(bench/placing.py --methods; docs/BENCHMARKS.md; 50 against 126 since the members are
compared as below, 2026-12-06). policy.TREE_FROM and Policy.tree_from say where the daemon
uses it, and only where the tree compares few centres (`CentreTree.worth`): lists whose
centres crowd into a few big groups that every row probes are assigned without one.

Where the centres differ along few directions (as embeddings' do), the members are compared
in the centres' leading principal directions only: which centre scores best depends on how
the centres differ. Each probed group's best member by those scores is put forward, and a
row's CANDIDATES best of them are compared again with the whole row in float32, so the centre
chosen is scored exactly. Centres that differ along most directions are compared whole.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np

from ..cpu import torch_threads

# Groups: about GROUPS_PER_SQRT * sqrt(k) of them (k-means of the centres, float32, spherical);
# a row is compared with the members of its PROBES best. At 16,000 lists of 1M spectral
# vectors, 100,000 rows (an ad-hoc run, docs/BENCHMARKS.md): 128 groups and 8 / 16 / 32 probed
# found the nearest centre for 97.2 / 99.4 / 99.9% of rows comparing ~1,400 / 2,700 / 5,000
# centres; 64 groups, 16 probed: 99.8% for 4,600. 256 groups, 16 probed (since 2026-12-06):
# 99.6% for fewer (bench/tree_dims.py, below).
GROUPS_PER_SQRT = 2.0
PROBES = 16
GROUP_ITERATIONS = 10
# The members are compared in the fewest of the centres' principal directions holding
# VARIANCE_KEPT of the centres' variance (about their mean), where those are at most
# MAX_SHARE of the dimensions, else whole; each row's CANDIDATES best group winners are
# compared again in float32 with the whole row. The 10M spectral library's 16,384 centres: 201
# of 512 directions; 100,000 other rows on a Zen 4 (bench/tree_dims.py, docs/BENCHMARKS.md):
# 256 groups in 201 directions 35-37 CPU-us a row, the nearest centre for 98.2% of rows (the
# others' a mean 0.0016 less similar); 256 groups compared whole 45-46 us, 99.6%; 128 groups
# compared whole (before) 48-62 us, 99.7%. The whole 10M import 1.3x quicker after its
# training (bench/import_rate.py), the same recall (bench/placing.py).
VARIANCE_KEPT = 0.97
MAX_SHARE = 0.5
CANDIDATES = 3
# Rows compared at once (their groups' members are gathered one group at a time). Each group
# costs a few Python calls, each needing the GIL, which an import's reader (Python) holds in
# 5 ms slices: a group's products write into one buffer (`_block`) with as few calls as can be.
# 8,192 rows: 29.8 us a row, 16,384: 38.5, 4,096: 33.7 (an ad-hoc run on the Zen 4 above).
BLOCK_ROWS = 8_192
# The groups' products are small (~500 pairs by ~60 members a group): on a team of two OpenMP
# threads each is split and joined, and the joins' spinning took 14% of an import encoder's
# samples (py-spy) while the import's reader and writer wanted the other core. One thread
# for them: 2M rows of the 10M import after its training 21,223-22,000 rows/s against
# 19,725-20,474, 6-10% less CPU a row (bench/import_rate.py, docs/BENCHMARKS.md); the larger
# products before the loop keep the caller's team. The training's k-means, which has the CPU to
# itself, keeps its team for them too (`group_threads` None): alone, the tree is 1.2-1.4x
# quicker in wall time on two threads (bench/tree_dims.py), the 10M library's k-means 1.1x
# (bench/kmeans.py --two-level-only).
GROUP_THREADS = 1
# A tree is worth it where its `share` (the work of assigning a row, against comparing it with
# every centre whole) is at most MAX_SHARE_WORTH; elsewhere the rows are assigned as under
# Policy.tree_from (assigning.assigner). Its products are small and gathered, ~5x the cost of a
# centre compared in the full bfloat16 product, and each group's on one thread: at 16,000
# lists of 1M clustered 1280-d vectors (bench/scale.py's, whose centres differ along most
# directions and crowd into a few big groups) a row was compared with 15,625 whole centres
# (share 0.99), 382-689 us a row against 118 by the bfloat16 product, where the 10M spectral
# library's lists share 0.05 (docs/BENCHMARKS.md "A tree of centres only where it compares
# few"). The
# share is estimated on SHARE_ROWS of the centres, which stand in for rows (an import's rows
# are not known when its placer is made).
MAX_SHARE_WORTH = 0.2
SHARE_ROWS = 2_048


class CentreTree:
    """Centroids to assign rows to (`nearest`, `assign`), as assigning.Centres, through groups."""

    def __init__(
        self, centres: np.ndarray, seed: int = 1234, group_threads: int | None = GROUP_THREADS
    ) -> None:
        """A tree of `centres` (k x d); the groups' products on `group_threads` OpenMP
        threads, None: the caller's team."""
        import faiss
        import torch

        exact = np.ascontiguousarray(centres, np.float32)
        k, d = exact.shape
        groups = max(1, min(k, round(GROUPS_PER_SQRT * np.sqrt(k))))
        km = faiss.Kmeans(d, groups, niter=GROUP_ITERATIONS, spherical=True, seed=seed,
                          verbose=False, max_points_per_centroid=1 << 30)  # fmt: skip
        km.cp.min_points_per_centroid = 1
        km.train(exact)
        # Each centre in its nearest group; a group no centre is nearest to is dropped.
        used, owner = np.unique(km.index.search(exact, 1)[1][:, 0], return_inverse=True)
        order = np.argsort(owner, kind="stable")
        self.order = torch.from_numpy(order.astype(np.int64))  # member slot -> centre number
        self.starts = np.r_[0, np.cumsum(np.bincount(owner))]
        # The centres' leading principal directions (d x some), or None: compared whole.
        self.project = _directions(exact)
        members = torch.from_numpy(exact[order])  # each group's centres together
        if self.project is not None:
            members = members @ self.project
        bounds = zip(self.starts[:-1].tolist(), self.starts[1:].tolist(), strict=True)
        self.columns = [members[a:b].T.contiguous() for a, b in bounds]
        means = np.asarray(km.centroids, np.float32)[used]
        self.means = torch.from_numpy(np.ascontiguousarray(means.T))
        self.exact = torch.from_numpy(exact)
        self.probes = min(PROBES, len(used))
        self.size = int(k)
        self.group_threads = group_threads
        self.share = self._share(exact)

    @property
    def worth(self) -> bool:
        """Whether assigning rows through this tree saves work (MAX_SHARE_WORTH)."""
        return self.share <= MAX_SHARE_WORTH

    def _share(self, exact: np.ndarray) -> float:
        """The work of assigning a row, as a share of comparing it with every centre whole:
        the groups' means, the probed groups' members (in the directions compared) and the
        candidates' second look, for up to SHARE_ROWS of the centres standing in for rows."""
        import torch

        k, d = int(exact.shape[0]), int(exact.shape[1])
        rows = torch.from_numpy(exact[:: max(1, k // SHARE_ROWS)])
        probed = torch.mm(rows, self.means).topk(self.probes, dim=1).indices.numpy()
        members = float(np.diff(self.starts)[probed].sum(axis=1).mean())
        means = float(len(self.columns))
        if self.project is None:
            return (means + members) / k
        return (means + members * int(self.project.shape[1]) / d + CANDIDATES) / k

    def __len__(self) -> int:
        return self.size

    def nearest(self, rows: np.ndarray) -> np.ndarray:
        """Each float32 row's nearest centre by inner product (int64)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(rows, np.float32))
        out: np.ndarray = self.assign(x).numpy()
        return out

    def assign(self, rows: Any, low: Any = None) -> Any:
        """Each row's nearest centre among its best groups' members (int64 tensor); `low` (a
        bfloat16 copy assigning.Centres would use) is not read."""
        import torch

        out = torch.empty(rows.shape[0], dtype=torch.int64)
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            block = rows[start : start + BLOCK_ROWS]
            out[start : start + len(block)] = self._block(block)
        return out

    def _block(self, rows: Any) -> Any:
        """Every (row, probed group) pair scored by the group's best member, the pairs taken
        group by group (one product each), then each row's best pair; members compared in
        the principal directions: its CANDIDATES best pairs' members again, whole."""
        import torch

        n = rows.shape[0]
        best = torch.mm(rows, self.means).topk(self.probes, dim=1).indices.reshape(-1)
        order = torch.argsort(best, stable=True)  # the pairs, group by group
        which = order // self.probes  # each pair's row
        counts = torch.bincount(best, minlength=len(self.columns)).tolist()
        compared = rows if self.project is None else torch.mm(rows, self.project)
        sims = torch.empty(len(order))
        slots = torch.empty(len(order), dtype=torch.int64)
        at = 0
        team = nullcontext() if self.group_threads is None else torch_threads(self.group_threads)
        with team:
            for columns, count in zip(self.columns, counts, strict=True):
                if count:
                    scores = torch.mm(compared[which[at : at + count]], columns)
                    torch.max(scores, dim=1, out=(sims[at : at + count], slots[at : at + count]))
                    at += count
        slots += torch.from_numpy(self.starts[:-1])[best[order]]  # slot within group -> member
        by_row = torch.empty_like(sims).index_put_((order,), sims).view(n, self.probes)
        member = torch.empty_like(slots).index_put_((order,), slots).view(n, self.probes)
        if self.project is None:
            return self.order[member.gather(1, by_row.argmax(dim=1, keepdim=True))[:, 0]]
        picks = by_row.topk(min(CANDIDATES, self.probes), dim=1).indices
        near = self.order[member.gather(1, picks)]  # (n, candidates) centre numbers
        again = torch.bmm(self.exact[near], rows[:, :, None])[:, :, 0]
        return near.gather(1, again.argmax(dim=1, keepdim=True))[:, 0]


def _directions(centres: np.ndarray) -> Any:
    """The fewest leading principal directions of the centres (their covariance's top
    eigenvectors) holding VARIANCE_KEPT of their variance, as the columns of a float32 tensor
    (d x dims); None where those are over MAX_SHARE of the d dimensions."""
    import torch

    shifted = centres - centres.mean(axis=0)
    values, vectors = np.linalg.eigh((shifted.T @ shifted).astype(np.float64))
    values, vectors = values[::-1], vectors[:, ::-1]
    held = np.cumsum(values) / max(float(values.sum()), 1e-30)
    dims = int(np.searchsorted(held, VARIANCE_KEPT)) + 1
    if dims > MAX_SHARE * centres.shape[1]:
        return None
    return torch.from_numpy(np.ascontiguousarray(vectors[:, :dims], np.float32))
