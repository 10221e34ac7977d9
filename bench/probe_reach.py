"""Which lists must a search probe? A fixed nprobe against lists chosen per query by their
centres' scores, on a saved base and exact ground truth.

    python bench/probe_reach.py --data DATA_DIR --n 10000000 --dist spectral --truth 200

For each query (bench/scale.py's new photos, the first --truth of them, whose exact top 10 over
the library's stored rows search_profile.py computed and cached), the lists are ranked by their
centres' inner product with the query, as a search does. A true neighbour is *reachable* when
its list is probed; the recall a search can reach is the share reachable (the daemon's pool,
fine codes and re-scoring bring it within ~0.005 of that: docs/BENCHMARKS.md). For each rule of
choosing the lists the script reports that reachable recall and the codes a query compares
(the probed lists' sizes summed), so rules compare at equal recall by what they scan:

- fixed: the best nprobe lists (the daemon's rule);
- gap: every list whose centre scores within delta of the query's best centre (at least
  --floor lists, at most --cap; the deltas tried are quantiles of the queries' spread between
  their best and 1,000th centre), so a query whose best lists stand out probes fewer.

No search runs: the lists' ids come from the base's inverted lists. Appends one JSON line to
bench/out/probe_reach.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from scale import library_args, library_queries  # noqa: E402
from search_profile import exact_truth_ids  # noqa: E402

from imgsearch.index import base as B  # noqa: E402


def list_of_ids(ivf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each list's size, and a map from store id to its list (-1: none)."""
    import faiss

    invlists = ivf.invlists
    sizes = np.array([invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
    parts = []
    for i in range(ivf.nlist):
        n = int(sizes[i])
        if n:
            ids = faiss.rev_swig_ptr(invlists.get_ids(i), n).copy()
            parts.append((i, ids))
    top = max(int(p[1].max()) for p in parts) + 1
    where = np.full(top, -1, np.int32)
    for i, ids in parts:
        where[ids] = i
    return sizes, where


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--truth", type=int, default=200)
    parser.add_argument("--floor", type=int, default=64)
    parser.add_argument("--cap", type=int, default=4096)
    args = parser.parse_args()
    start = time.time()
    queries = library_queries(args, 1000)[: args.truth]
    want = exact_truth_ids(args.data, queries)
    base = B.saved(args.data / "index")[0]
    progress(f"reading {base}")
    index = faiss.read_index(str(base / "index.faiss"), faiss.IO_FLAG_MMAP)
    ivf = faiss.extract_index_ivf(index)
    sizes, where = list_of_ids(ivf)
    centres = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    meta = json.loads((base / B.META).read_text())
    scores = queries @ centres.T  # (q, lists)
    order = np.argsort(-scores, axis=1)
    ranked = np.take_along_axis(scores, order, axis=1)
    rank_of = np.empty_like(order)
    rows = np.arange(len(queries))[:, None]
    rank_of[rows, order] = np.arange(ivf.nlist)[None, :]
    # each true neighbour's list's rank in its query's order
    need = np.array([[rank_of[q, where[i]] for i in sorted(ids)] for q, ids in enumerate(want)])
    cum = np.cumsum(sizes[order], axis=1)

    def fixed(nprobe: int) -> tuple[float, float]:
        return float((need < nprobe).mean()), float(cum[:, nprobe - 1].mean())

    def gap(delta: float) -> tuple[float, float, float]:
        count = (ranked >= ranked[:, :1] - delta).sum(axis=1)
        count = np.clip(count, args.floor, args.cap)
        reach = (need < count[:, None]).mean()
        return float(reach), float(cum[rows[:, 0], count - 1].mean()), float(np.median(count))

    out: dict[str, Any] = {"cpu": cpu_model(), "n": args.n, "data": str(args.data)}
    out.update(base=base.name, lists=int(ivf.nlist), tuned_nprobe=meta.get("nprobe"))
    out["needed_rank_p50_p90_p99_max_of_worst_neighbour"] = np.percentile(
        need.max(axis=1), [50, 90, 99, 100]
    ).tolist()
    out["fixed"] = []
    for nprobe in (128, 256, 384, 512, 768, 1024, 1387, 2048, 3072, 4096):
        reach, codes = fixed(nprobe)
        out["fixed"].append({"nprobe": nprobe, "reach": reach, "codes": codes})
        progress(f"fixed {nprobe}: reach {reach:.4f}, codes {codes:,.0f}")
    spread = ranked[:, 0] - ranked[:, 1000]
    out["gap"] = []
    for delta in np.quantile(spread, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).tolist():
        reach, codes, median = gap(delta)
        out["gap"].append({"delta": delta, "reach": reach, "codes": codes, "median": median})
        progress(f"gap {delta:.4f}: reach {reach:.4f}, codes {codes:,.0f}, lists p50 {median}")
    out["seconds"] = round(time.time() - start, 1)
    record(out, "probe_reach")


if __name__ == "__main__":
    main()
