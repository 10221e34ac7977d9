"""Each row's nearest centre through a two-level tree of the centres, in float32: the centres
are grouped by their own k-means into ~sqrt(k) groups; a row is compared with the groups'
means, then with the members of its PROBES best groups only.

Where the CPU has no AMX, comparing every row with every centre (kmeans.Centres: a bfloat16
product, the best candidates again in float32) is most of an import's CPU: at 16,000 lists
57 us a row on two Zen 4 cores (AVX512-BF16 at ~300 GFLOP/s). The tree compares a row with
~2,700 of 16,000 centres (its best 16 of 128 groups; the groups are uneven and the popular
ones big) in float32, so the scores it compares are exact: the nearest centre for 99.4% of
rows, and otherwise one within a mean 0.00013 of it (bench/placing.py --method; the bfloat16
product's 4 candidates found it for 99.94%). bench/placing.py and bench/import_rate.py
measure both; policy.Policy.tree_assign says which one the daemon uses on which CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Groups: about GROUPS_PER_SQRT * sqrt(k) of them (k-means of the centres, float32, spherical);
# a row is compared with the members of its PROBES best. At 16,000 lists of 1M spectral
# vectors, 100,000 rows (an ad-hoc run, docs/BENCHMARKS.md): 128 groups and 8 / 16 / 32 probed
# found the nearest centre for 97.2 / 99.4 / 99.9% of rows comparing ~1,400 / 2,700 / 5,000
# centres; 64 groups, 16 probed: 99.8% for 4,600.
GROUPS_PER_SQRT = 1.0
PROBES = 16
GROUP_ITERATIONS = 10
# Rows compared at once (their groups' members are gathered per group).
BLOCK_ROWS = 8_192


class CentreTree:
    """Centroids to assign rows to (`nearest`, `assign`), as kmeans.Centres, through groups."""

    def __init__(self, centres: np.ndarray, seed: int = 1234) -> None:
        import faiss
        import torch

        exact = np.ascontiguousarray(centres, np.float32)
        k, d = exact.shape
        groups = max(1, min(k, round(GROUPS_PER_SQRT * np.sqrt(k))))
        km = faiss.Kmeans(d, groups, niter=GROUP_ITERATIONS, spherical=True, seed=seed,
                          verbose=False, max_points_per_centroid=1 << 30)  # fmt: skip
        km.cp.min_points_per_centroid = 1
        km.train(exact)
        owner = km.index.search(exact, 1)[1][:, 0]
        order = np.argsort(owner, kind="stable")
        self.order = torch.from_numpy(order.astype(np.int64))  # member slot -> centre number
        self.starts = np.r_[0, np.cumsum(np.bincount(owner, minlength=groups))]
        self.members = torch.from_numpy(exact[order])  # k x d, each group's rows together
        means = np.asarray(km.centroids, np.float32)
        self.means = torch.from_numpy(np.ascontiguousarray(means.T))
        self.probes = min(PROBES, groups)
        self.size = int(k)

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
        bfloat16 copy kmeans.Centres would use) is not read."""
        import torch

        out = torch.empty(rows.shape[0], dtype=torch.int64)
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            block = rows[start : start + BLOCK_ROWS]
            out[start : start + len(block)] = self._block(block)
        return out

    def _block(self, rows: Any) -> Any:
        import torch

        n = rows.shape[0]
        best = torch.mm(rows, self.means).topk(self.probes, dim=1).indices.reshape(-1)
        which = torch.arange(n).repeat_interleave(self.probes)
        by_group = torch.argsort(best, stable=True)
        counts = torch.bincount(best, minlength=len(self.starts) - 1).tolist()
        score = torch.full((n,), -torch.inf)
        slot = torch.zeros(n, dtype=torch.int64)
        at = 0
        for group, count in enumerate(counts):
            if not count:
                continue
            mine = which[by_group[at : at + count]]
            at += count
            first, last = int(self.starts[group]), int(self.starts[group + 1])
            sims, pos = torch.mm(rows[mine], self.members[first:last].T).max(dim=1)
            better = sims > score[mine]
            score[mine[better]] = sims[better]
            slot[mine[better]] = pos[better] + first
        return self.order[slot]
