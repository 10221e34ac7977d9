"""Which lists a search should probe: a fixed count, or as many as the query's centre scores ask.

    python bench/probe_rule.py --n 1000000 --dist spectral
    python bench/probe_rule.py --n 1000000 --dist clustered --queries 1000

Builds the policy's index for N of bench/scale.py's vectors (as bench/ivf_reach.py does),
then, for new-photo queries and for stored vectors (the tuning's queries, each one's own id
left out), compares rules that choose a query's lists from its centres' similarities:

- "count": the nprobe best lists (what the daemon does today);
- "gap": every list whose centre scores within `gap` of the query's best centre, at least
  `floor` lists (a query whose neighbours sit in a tight region probes few lists, one amid
  many near centres probes more).

For each rule and setting: the codes a query compares (the probed lists' real sizes) and the
share of the exact top 10 that lie in probed lists (an upper bound on recall@10: the codes'
ranking can only lose some of them). No scan is run: this is the lists alone. Appends one
JSON line to bench/out/probe_rule.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from big_search import exact_truth  # noqa: E402
from ivf_reach import policy_index, stored  # noqa: E402
from placing import lists_of  # noqa: E402
from scale import DISTRIBUTIONS, Vectors  # noqa: E402

K = 10
TARGETS = (0.95, 0.97, 0.98, 0.99)


def coverage(
    order: np.ndarray, cut: np.ndarray, sizes: np.ndarray, want_lists: np.ndarray
) -> tuple[float, float]:
    """Mean codes compared and share of the true neighbours' lists probed when query i probes
    its first cut[i] lists of order[i]."""
    codes = 0.0
    found = 0
    for row, n, want in zip(order, cut, want_lists, strict=True):
        probed = row[:n]
        codes += sizes[probed].sum()
        found += np.isin(want, probed).sum()
    return codes / len(order), found / want_lists.size


def at_target(points: list[tuple[float, float]], target: float) -> float | None:
    """The fewest mean codes reaching `target` coverage (linear between measured settings)."""
    points = sorted(points)
    for (c0, r0), (c1, r1) in zip(points, points[1:], strict=False):
        if r0 < target <= r1:
            return c0 + (c1 - c0) * (target - r0) / (r1 - r0)
    return points[0][0] if points and points[0][1] >= target else None


def rules(
    sims: np.ndarray, order: np.ndarray, sizes: np.ndarray, want_lists: np.ndarray
) -> dict[str, Any]:
    nlist = sims.shape[1]
    out: dict[str, Any] = {}
    counts = sorted({max(1, int(nlist * f)) for f in np.geomspace(0.002, 0.5, 24)})
    points = []
    for p in counts:
        codes, cover = coverage(order, np.full(len(order), p), sizes, want_lists)
        points.append((codes, cover))
    out["count"] = points
    best = sims[:, :1]
    for floor in (1, 8, 32):
        points = []
        for gap in np.geomspace(0.01, 0.6, 30):
            cut = np.maximum(floor, (sims >= best - gap).sum(axis=1))
            points.append(coverage(order, cut, sizes, want_lists))
        out[f"gap floor {floor}"] = points
    return out


def spill_rules(order: np.ndarray, sizes: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    """Coverage when every vector is also in a second list: a neighbour is found where
    either of its lists is probed (want: queries x K x 2 lists)."""
    nlist = order.shape[1]
    points = []
    for p in sorted({max(1, int(nlist * f)) for f in np.geomspace(0.001, 0.5, 26)}):
        codes = found = 0.0
        for row, lists in zip(order, want, strict=True):
            probed = row[:p]
            codes += sizes[probed].sum()
            found += np.isin(lists, probed).any(axis=1).sum()
        points.append((codes / len(order), found / (want.shape[0] * want.shape[1])))
    return {"spill count": points}


def second_lists(
    x: np.ndarray, centres: np.ndarray, owner: np.ndarray, lam: float, candidates: int = 16
) -> np.ndarray:
    """Each vector's spilled list (SOAR: the centre c' among its best `candidates` minimising
    |x - c'|^2 + lam <x - c', r/|r|>^2, r = x - its own list's centre)."""
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), 10_000):
        v = x[start : start + 10_000]
        sims = v @ centres.T
        top = np.argpartition(-sims, candidates, axis=1)[:, :candidates]
        mine = owner[start : start + 10_000]
        r = v - centres[mine]
        r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        rr = v[:, None, :] - centres[top]  # (rows, candidates, dim)
        loss = (rr**2).sum(axis=2) + lam * np.einsum("rcd,rd->rc", rr, r) ** 2
        loss[top == mine[:, None]] = np.inf
        out[start : start + 10_000] = np.take_along_axis(top, loss.argmin(axis=1)[:, None], 1)[:, 0]
    return out


def spilled(
    x: np.ndarray,
    centres: np.ndarray,
    owner: np.ndarray,
    sizes: np.ndarray,
    sample: int,
    lam: float,
) -> tuple[Any, np.ndarray] | None:
    """(ids -> second lists, the lists' sizes with every vector spilled, estimated from
    `sample` vectors); None without a sample."""
    if not sample:
        return None
    rng = np.random.default_rng(5)
    picked = np.sort(rng.choice(len(x), sample, replace=False))
    extra = np.bincount(second_lists(x[picked], centres, owner[picked], lam), minlength=len(sizes))
    sizes2 = sizes + extra * (len(x) / sample)

    def lists2(ids: np.ndarray) -> np.ndarray:
        flat = ids.reshape(-1)
        return second_lists(x[flat], centres, owner[flat], lam).reshape(ids.shape)

    return lists2, sizes2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="spectral")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--spill-sample", type=int, default=0, help="spill: vectors sampled")
    parser.add_argument("--spill-lambda", type=float, default=1.0)
    args = parser.parse_args()
    import faiss

    vectors = Vectors(args.n, 512, args.dist)
    progress(f"regenerating {args.n:,} vectors")
    x = stored(vectors)
    index, built = policy_index(x, args.dist)
    ivf = faiss.extract_index_ivf(index)
    owner = lists_of(index)  # each vector's list
    sizes = np.bincount(owner, minlength=ivf.nlist)
    centres = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    result: dict[str, Any] = {
        "bench": "probe_rule", "cpu": cpu_model(), "load": os.getloadavg(), "n": args.n,
        "dist": args.dist, "queries": args.queries, **built,
        "imbalance": float(ivf.invlists.imbalance_factor()),
    }  # fmt: skip
    rng = np.random.default_rng(99)
    picked = rng.choice(args.n, args.queries, replace=False)
    second = spilled(x, centres, owner, sizes, args.spill_sample, args.spill_lambda)
    kinds = {"new photos": vectors.queries(args.queries), "stored": x[picked]}
    for kind, queries in kinds.items():
        progress(f"{kind}: exact top {K}")
        want = exact_truth(x, queries, picked if kind == "stored" else None)  # own id out
        sims = queries @ centres.T
        order = np.argsort(-sims, axis=1)
        sims = np.take_along_axis(sims, order, axis=1)
        table = rules(sims, order, sizes, owner[want])
        if second is not None:
            lists2, sizes2 = second
            both = np.stack([owner[want], lists2(want)], axis=2)
            table.update(spill_rules(order, sizes2, both))
        summary = {
            name: {str(t): at_target(points, t) for t in TARGETS} for name, points in table.items()
        }
        for name, row in summary.items():
            figures = "  ".join(f"{t}: {c:,.0f}" if c else f"{t}: -" for t, c in row.items())
            progress(f"{kind:10s} {name:14s} codes at coverage {figures}")
        result[kind] = {"summary": summary, "points": table}
    record(result, "probe_rule")


if __name__ == "__main__":
    main()
