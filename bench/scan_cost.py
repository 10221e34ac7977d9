"""What a search's scan of the probed lists costs, per code, on a saved base.

    python bench/scan_cost.py --data DATA_DIR --n 10000000               # bench/scale.py --keep's
    python bench/scan_cost.py --data DATA_DIR --n 10000000 --nprobe 64 256 1329 4096 --k 10 1000
    python bench/scan_cost.py --data DATA_DIR --n 10000000 --nprobe 1490 --k 2000 --implem 0 11
    python bench/scan_cost.py --data DATA_DIR --n 10000000 --nprobe 1424 946 --k 2000 --paired

Reads the newest base under DATA_DIR/index (its index.faiss, as the daemon loads it) and
searches it with bench/scale.py's new-photo queries for a library of N, on one thread, as
FAISS does it (coarse assignment, then the scan): p50 ms at each --nprobe and --k, the codes
the probed lists hold (a query's nearest lists are often bigger than the average one) and the
ms a million codes cost, which the marginal figure between two nprobe values states without
the coarse assignment and the per-query overhead. The coarse assignment alone is timed too
(the quantizer's search for nprobe lists). --implem 0 11 then times the scan alone as the
daemon's lone searches make it (`scans.preassigned`, on one thread and split over two),
with each FAISS `implem` in turns for each query (at the last --k), paired, and all the
queries at once on two threads (a tuning's batch). --paired times the whole search at each
--nprobe in turns for each query instead of one --nprobe after another. Prints the CPU
model and load; appends one JSON line to bench/out/scan_cost.jsonl. Nothing is written to
DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
    parser.add_argument(
        "--implem", type=int, nargs="+", default=[],
        help="FAISS implem values to time the scan alone with, in turns (e.g. 0 11)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3, help="passes over the queries (--implem, --paired)"
    )
    parser.add_argument(
        "--paired", action="store_true", help="then each --nprobe in turns for each query"
    )
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
    if args.paired:
        out["paired"] = paired(index, queries[3:], args)
    if args.implem:
        out["implem"] = implems(index, ivf, queries[3:], args)
    record(out, "scan_cost")


def paired(index: Any, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """FAISS's whole search (coarse assignment and scan, one thread, at the first --k) at each
    --nprobe in turns for each query, the order rotated each query and round, --rounds times
    over the queries: p50 ms each, and the median ratio of each to the first --nprobe for the
    same query (the machine's drift, which moves back-to-back runs by 30% here, cancels out)."""
    import faiss

    times: dict[int, list[float]] = {nprobe: [] for nprobe in args.nprobe}
    params = {}
    for nprobe in args.nprobe:
        params[nprobe] = faiss.SearchParametersIVF()
        params[nprobe].nprobe = nprobe
    for turn in range(args.rounds):
        for n, q in enumerate(queries):
            shift = (n + turn) % len(args.nprobe)
            for nprobe in args.nprobe[shift:] + args.nprobe[:shift]:
                start = time.perf_counter()
                index.search(q[None], args.k[0], params=params[nprobe])
                times[nprobe].append((time.perf_counter() - start) * 1000)
    base = np.array(times[args.nprobe[0]])
    out: dict[str, Any] = {}
    for nprobe, ms in times.items():
        ratio = float(np.median(np.array(ms) / base))
        out[f"nprobe {nprobe}"] = {"ms": percentiles(ms), "ratio": ratio}
        print(f"paired, nprobe {nprobe:6d}: p50 {np.median(ms):7.2f} ms, {ratio:.3f}x")
    return out


def implems(index: Any, ivf: Any, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """The scan alone, as the daemon's lone searches make it (the lists found first, then
    `scans.preassigned`: one thread, and split as the daemon splits it, every other list on
    a second thread), with each of FAISS's `implem` values of --implem in turns for each
    query, --rounds times over the queries: p50 ms each, and the median ratio of each to the
    first one for the same query (paired: the machine's drift cancels out). Then every query
    at once on two threads (FAISS's own search, as a tuning's batch runs), --rounds times each
    way in turns: the batch's median ms."""
    import faiss

    from imgsearch.index.rotation import rotated, transform_of
    from imgsearch.index.scans import preassigned

    queries = rotated(transform_of(index), queries)  # (a rotated index's lists are in its space)
    helper = ThreadPoolExecutor(1, "helper", lambda: faiss.omp_set_num_threads(1))
    out: dict[str, Any] = {}
    kk = args.k[-1]
    for nprobe in args.nprobe:
        found = [ivf.quantizer.search(q[None], nprobe) for q in queries]
        for way, split in (("one thread", False), ("split", True)):
            times: dict[int, list[float]] = {implem: [] for implem in args.implem}
            for turn in range(args.rounds):
                for n, (q, (dist, lists)) in enumerate(zip(queries, found, strict=True)):
                    order = args.implem[(n + turn) % 2 :] + args.implem[: (n + turn) % 2]
                    for implem in order:
                        ivf.implem = implem
                        start = time.perf_counter()
                        if split:
                            other = helper.submit(
                                preassigned, ivf, q[None], kk, lists[:, 1::2], dist[:, 1::2], None
                            )
                            preassigned(ivf, q[None], kk, lists[:, ::2], dist[:, ::2], None)
                            other.result()
                        else:
                            preassigned(ivf, q[None], kk, lists, dist, None)
                        times[implem].append((time.perf_counter() - start) * 1000)
            first = np.asarray(times[args.implem[0]])
            for implem, took in times.items():
                ratio = float(np.median(np.asarray(took) / first))
                out[f"nprobe {nprobe}, {way}, implem {implem}"] = {
                    "ms": percentiles(took), "ratio": ratio,
                }  # fmt: skip
                print(f"nprobe {nprobe} k {kk}, {way}: implem {implem:2d} p50 "
                      f"{np.median(took):6.2f} ms, {ratio:.3f}x the first's")  # fmt: skip
        faiss.omp_set_num_threads(2)
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        batch: dict[int, list[float]] = {implem: [] for implem in args.implem}
        for _ in range(args.rounds):
            for implem in args.implem:
                ivf.implem = implem
                start = time.perf_counter()
                ivf.search(queries, kk, params=params)
                batch[implem].append((time.perf_counter() - start) * 1000)
        faiss.omp_set_num_threads(1)
        for implem, took in batch.items():
            out[f"nprobe {nprobe}, {len(queries)} queries at once, implem {implem}"] = {
                "ms": percentiles(took)
            }
            print(f"nprobe {nprobe} k {kk}, {len(queries)} queries at once on two threads: "
                  f"implem {implem:2d} {np.median(took):7.1f} ms")  # fmt: skip
    ivf.implem = 0
    helper.shutdown()
    return out


if __name__ == "__main__":
    main()
