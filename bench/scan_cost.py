"""What a search's scan of the probed lists costs, per code, on a saved base.

    python bench/scan_cost.py --data DATA_DIR --n 10000000               # bench/scale.py --keep's
    python bench/scan_cost.py --data DATA_DIR --n 10000000 --nprobe 64 256 1329 4096 --k 10 1000

Reads the newest base under DATA_DIR/index (its index.faiss, as the daemon loads it) and
searches it with bench/scale.py's new-photo queries for a library of N, on one thread, as
FAISS does it (coarse assignment, then the scan): p50 ms at each --nprobe and --k, the codes
the probed lists hold (a query's nearest lists are often bigger than the average one) and the
ms a million codes cost, which the marginal figure between two nprobe values states without
the coarse assignment and the per-query overhead. The coarse assignment alone is timed too
(the quantizer's search for nprobe lists). Prints the CPU model and load; appends one JSON
line to bench/out/scan_cost.jsonl. Nothing is written to DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, percentiles, progress, record  # noqa: E402
from scale import library_args, library_queries  # noqa: E402

QUERIES = 40


def newest_base(data: Path) -> Path:
    bases = sorted(p for p in (data / "index").iterdir() if (p / "index.faiss").is_file())
    if not bases:
        raise SystemExit(f"no saved base under {data / 'index'}")
    return bases[-1] / "index.faiss"


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[64, 256, 1329, 4096])
    parser.add_argument("--k", type=int, nargs="+", default=[1000])
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    path = newest_base(args.data)
    progress(f"reading {path}")
    index = faiss.read_index(str(path))
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    queries = library_queries(args, QUERIES + 3)
    load = os.getloadavg()[0]
    out: dict[str, Any] = {
        "cpu": cpu_model(), "load": load, "base": str(path), "factory": type(ivf).__name__,
        "nlist": int(ivf.nlist), "ntotal": int(index.ntotal), "code_size": int(ivf.code_size),
        "runs": [],
    }  # fmt: skip
    about = f"{ivf.nlist} lists, {index.ntotal:,} codes of {ivf.code_size} B"
    print(f"{cpu_model()}, load {load:.2f}; {about}; one thread, {QUERIES} queries")
    for nprobe in args.nprobe:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        coarse, codes = [], []
        for q in queries[3:]:
            start = time.perf_counter()
            _, lists = ivf.quantizer.search(q[None], nprobe)
            coarse.append((time.perf_counter() - start) * 1000)
            codes.append(sum(ivf.invlists.list_size(int(i)) for i in lists[0] if i >= 0))
        for k in args.k:
            index.search(queries[:3], k, params=params)  # warm
            times = []
            for q in queries[3:]:
                start = time.perf_counter()
                index.search(q[None], k, params=params)
                times.append((time.perf_counter() - start) * 1000)
            per_million = float(np.median(times) / np.mean(codes) * 1e6)
            run = {
                "nprobe": nprobe, "k": k, "ms": percentiles(times),
                "coarse_ms": percentiles(coarse), "codes": float(np.mean(codes)),
                "ms_per_million_codes": per_million,
            }  # fmt: skip
            out["runs"].append(run)
            print(f"nprobe {nprobe:6d} k {k:5d}: p50 {run['ms']['p50']:7.2f} ms (coarse alone "
                  f"{run['coarse_ms']['p50']:.2f}); {run['codes']:,.0f} codes: "
                  f"{run['ms_per_million_codes']:.1f} ms a million")  # fmt: skip
    first = {r["nprobe"]: r for r in out["runs"] if r["k"] == args.k[0]}
    steps = sorted(first)
    for low, high in zip(steps, steps[1:], strict=False):
        a, b = first[low], first[high]
        marginal = (b["ms"]["p50"] - a["ms"]["p50"]) / max(1.0, b["codes"] - a["codes"]) * 1e6
        out.setdefault("marginal_ms_per_million_codes", {})[f"{low}-{high}"] = marginal
        print(f"nprobe {low} -> {high}: {marginal:.1f} ms a million codes more")
    record(out, "scan_cost")


if __name__ == "__main__":
    main()
