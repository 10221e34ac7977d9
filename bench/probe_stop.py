"""A search that stops probing once its candidates stop improving, against a fixed nprobe.

    python bench/probe_stop.py --n 1000000 --dist spectral
    python bench/probe_stop.py --n 3000000 --dist clustered --queries 300

Builds (or reads from bench/out/, cached with bench/probe_rule.py's name) the policy's index for
N of bench/scale.py's vectors, then searches bench/scale.py's new-photo queries one at a time
on one thread, as the daemon does (its coarse assignment, FAISS's scan of the probed lists'
4-bit codes), the best depth x 10 candidates then re-scored with the exact vectors (the
daemon ranks such a pool by its fine codes and re-scores the best few: an upper bound of it),
in two ways:

- fixed: the best nprobe lists in one scan (the daemon's rule; nprobe swept);
- staged: the lists in their order of centre score, scanned in stages (`start` lists, then
  `step` more at a time, or `grow` of those scanned where more, at most `cap`: a quarter of
  the lists unless given); after each stage the candidates' running best m (by
  the codes' scores) is compared with the one before it, and the search stops once `patience`
  stages in a row brought none into it. A query whose neighbours sit in its first lists stops
  early; one whose neighbours are spread probes on.

For each rule and setting: recall@10 against exact search, the codes compared (FAISS's
`indexIVF_stats.ndis`) and CPU ms a query (mostly the exact re-scoring here: compare the
codes), and the least codes each rule needs for recall@10 0.95-0.99. Appends one
JSON line to bench/out/probe_stop.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from big_search import exact_truth  # noqa: E402
from ivf_reach import policy_index, stored  # noqa: E402
from scale import DISTRIBUTIONS, Vectors  # noqa: E402

from imgsearch.index.coarse import centre_norms, inner  # noqa: E402
from imgsearch.index.rotation import rotated, transform_of  # noqa: E402
from imgsearch.index.scans import hnsw, preassigned, probe  # noqa: E402

K = 10
TARGETS = (0.95, 0.97, 0.98, 0.99)


class Searcher:
    """One query's searches of an index, as the daemon makes them."""

    def __init__(self, index: Any, x: np.ndarray, depth: int) -> None:
        import faiss

        self.index, self.x, self.pool = index, x, depth * K
        self.ivf = faiss.extract_index_ivf(index)
        self.norms = centre_norms(index)
        self.transform = transform_of(index)
        self.graph = hnsw(index)

    def assign(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qr = rotated(self.transform, q[None].astype(np.float32))
        dist, lists = probe(self.ivf, qr, nprobe, self.graph)
        return qr, lists, inner(qr, lists, dist, self.norms)

    def rescore(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        ids = ids[ids >= 0]
        return ids[np.argsort(-(self.x[ids] @ q))[:K]]

    def fixed(self, q: np.ndarray, nprobe: int) -> np.ndarray:
        qr, lists, dist = self.assign(q, nprobe)
        return self.rescore(q, preassigned(self.ivf, qr, self.pool, lists, dist, None)[1][0])

    def staged(
        self, q: np.ndarray, start: int, step: int, cap: int, patience: int, m: int,
        grow: float = 0.0,
    ) -> np.ndarray:  # fmt: skip
        qr, lists, dist = self.assign(q, cap)
        sims, ids = preassigned(self.ivf, qr, self.pool, lists[:, :start], dist[:, :start], None)
        best_s, best_i = sims[0], ids[0]
        done, quiet = start, 0
        while done < cap and quiet < patience:
            end = min(cap, done + max(step, int(done * grow)))
            s, i = preassigned(self.ivf, qr, self.pool, lists[:, done:end], dist[:, done:end], None)
            done = end
            floor = best_s[min(m, len(best_s)) - 1]  # the running best m's last score
            quiet = 0 if (s[0] > floor).any() else quiet + 1
            both_s, both_i = np.concatenate([best_s, s[0]]), np.concatenate([best_i, i[0]])
            order = np.argsort(-both_s, kind="stable")[: self.pool]
            best_s, best_i = both_s[order], both_i[order]
        return self.rescore(q, best_i)


def measure(
    run: Any, queries: np.ndarray, want: np.ndarray
) -> tuple[float, float, float]:  # fmt: skip
    """(recall@10, codes compared a query, CPU ms a query) of `run(q)` over the queries."""
    import faiss

    faiss.cvar.indexIVF_stats.reset()
    start = time.thread_time()
    hits = sum(len(np.intersect1d(run(q), w)) for q, w in zip(queries, want, strict=True))
    cpu = (time.thread_time() - start) * 1000 / len(queries)
    return hits / want.size, faiss.cvar.indexIVF_stats.ndis / len(queries), cpu


def at_target(points: list[dict[str, Any]], target: float, key: str) -> float | None:
    """The least `key` (codes or ms) reaching `target` recall, linear between settings on the
    lower hull of (key, recall)."""
    best = None
    ordered = sorted(points, key=lambda p: p[key])
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a["recall"] < target <= b["recall"]:
            v = a[key] + (b[key] - a[key]) * (target - a["recall"]) / (b["recall"] - a["recall"])
            best = v if best is None else min(best, v)
    for p in ordered:
        if p["recall"] >= target:
            best = p[key] if best is None else min(best, p[key])
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="spectral")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--depth", type=int, default=4, help="candidates re-scored: depth x 10")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[])
    parser.add_argument("--starts", type=int, nargs="*", default=[16, 32, 64, 128])
    parser.add_argument("--steps", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--patience", type=int, nargs="*", default=[1, 2, 3, 4, 6])
    parser.add_argument("--m", type=int, nargs="*", default=[K], help="the running best m")
    parser.add_argument(
        "--grow",
        type=float,
        nargs="*",
        default=[0.0],
        help="a stage: at least this share of the lists probed before it",
    )
    parser.add_argument("--cap", type=int, default=0, help="staged: lists at most (0: nlist/4)")
    args = parser.parse_args()
    import faiss

    vectors = Vectors(args.n, 512, args.dist)
    progress(f"regenerating {args.n:,} vectors")
    x = stored(vectors)
    index, built = policy_index(x, args.dist)  # (built on every core)
    faiss.omp_set_num_threads(1)  # (searched on one, as the daemon's lone searches)
    ivf = faiss.extract_index_ivf(index)
    cap = args.cap or ivf.nlist // 4
    queries = vectors.queries(args.queries)
    progress(f"exact top {K} of {len(queries)} new photos")
    want = exact_truth(x, queries, None)
    s = Searcher(index, x, args.depth)
    result: dict[str, Any] = {
        "bench": "probe_stop", "cpu": cpu_model(), "load": os.getloadavg(), "n": args.n,
        "dist": args.dist, "queries": len(queries), "depth": args.depth, "lists": ivf.nlist,
        "cap": cap, **built,
    }  # fmt: skip
    nprobes = args.nprobe or sorted(
        {max(1, int(ivf.nlist * f)) for f in np.geomspace(0.004, 0.25, 14)}
    )
    fixed = []
    for nprobe in nprobes:
        r, codes, ms = measure(partial(s.fixed, nprobe=nprobe), queries, want)
        fixed.append({"nprobe": nprobe, "recall": r, "codes": codes, "ms": ms})
        progress(f"fixed  nprobe {nprobe:6d}: recall {r:.4f}  codes {codes:9,.0f}  {ms:6.2f} ms")
    staged = []
    for m in args.m:
        for start in args.starts:
            for step in args.steps:
                for pat, grow in itertools.product(args.patience, args.grow):
                    run = partial(s.staged, start=start, step=step, cap=cap, patience=pat, m=m)
                    r, codes, ms = measure(partial(run, grow=grow), queries, want)
                    staged.append({
                        "start": start, "step": step, "patience": pat, "m": m, "grow": grow,
                        "recall": r, "codes": codes, "ms": ms,
                    })  # fmt: skip
                    progress(
                        f"staged m {m} start {start:4d} step {step:3d} patience {pat} grow {grow}: "
                        f"recall {r:.4f}  codes {codes:9,.0f}  {ms:6.2f} ms"
                    )
    summary = {}
    for t in TARGETS:
        f_codes, s_codes = at_target(fixed, t, "codes"), at_target(staged, t, "codes")
        f_ms, s_ms = at_target(fixed, t, "ms"), at_target(staged, t, "ms")
        summary[str(t)] = {
            "fixed_codes": f_codes,
            "staged_codes": s_codes,
            "fixed_ms": f_ms,
            "staged_ms": s_ms,
        }
        progress(
            f"recall {t}: codes fixed {f_codes} staged {s_codes}; ms fixed {f_ms} staged {s_ms}"
        )
    result.update(fixed=fixed, staged=staged, summary=summary)
    record(result, "probe_stop")


if __name__ == "__main__":
    main()
