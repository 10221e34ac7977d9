"""What a coded recent segment adds to a search: the base's index search with and without one.

    python bench/recent_search.py --data /work/big/K1280/data --rows 1000
    git worktree add --detach /tmp/before HEAD~1 && (cd /tmp/before && python \
        /work/main/bench/recent_search.py --data /work/big/K1280/data --rows 1000 --tree .)

Opens the newest saved base of DATA_DIR (a library bench/scale.py --keep left; nothing in it
is written) as the daemon searches it (`Segments`), and times `Segments.search` one query at a
time as a lone search runs it (its probed lists split with a helper thread), at the base's
tuned nprobe and the candidate pool its fine codes ask for: first with the recent segment
empty, then with --rows coded rows added to it (new ids). Rows and queries are list centres
moved a little (the base holds codes, not vectors). --tree runs the
code of another checkout (a `git worktree` of the tree before) on the same data. Prints p50 /
p99 ms of each, with the CPU model and load; appends one JSON line to
bench/out/recent_search.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--tree", type=Path, default=BENCH.parent, help="the code to time")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    sys.path.insert(0, str(BENCH))
    import faiss
    from _common import cpu_model, percentiles, progress, record

    from imgsearch.index import base as B
    from imgsearch.index import fine as F
    from imgsearch.index.reads import one_omp_thread
    from imgsearch.index.segments import Segments

    try:
        from imgsearch.index.coarse import centres
    except ImportError:  # a tree before 2026-12-06's float16 centres
        from imgsearch.index.segments import centres  # type: ignore[attr-defined,no-redef]

    folder = B.saved(args.data / "index")[0]
    meta = json.loads((folder / B.META).read_text())
    base = B.load(folder, meta["model_id"], meta["dim"])
    seg = Segments(base, threading.Lock())
    lists = centres(base.index)
    if lists is None:
        raise SystemExit(f"{folder}: not an IVF base over a flat coarse quantizer")
    # New rows and queries near the library's (the base holds codes, not vectors): random
    # lists' centres plus noise.
    rng = np.random.default_rng(0)
    picked = lists[rng.integers(0, len(lists), args.queries + args.rows)]
    dim = picked.shape[1]
    noisy = picked + 0.3 * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(dim)
    noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    if seg.transform is not None:  # the centres are in the rotated space: back to the vectors'
        rotation = faiss.vector_to_array(seg.transform.A).reshape(dim, dim)
        noisy = np.ascontiguousarray(noisy @ rotation, np.float32)
    queries, added = noisy[: args.queries], noisy[args.queries :]
    k, depth = 10, max(1, base.meta.rescore)
    wanted = F.pool(k, k * depth, seg.transform is not None) if base.fine else k * depth
    one_omp_thread()
    helper = ThreadPoolExecutor(1, "helper", one_omp_thread)
    result: dict[str, Any] = {
        "cpu": cpu_model(), "load": os.getloadavg(), "tree": str(args.tree.resolve()),
        "base": str(folder), "factory": base.meta.factory, "count": base.meta.count,
        "nprobe": base.meta.nprobe, "wanted": wanted, "rows": args.rows,
    }  # fmt: skip

    def timed(label: str) -> None:
        times = []
        for q in queries:
            start = time.perf_counter()
            seg.search(q[None], wanted, None, base.meta.nprobe, helper)
            times.append((time.perf_counter() - start) * 1000)
        result[label] = percentiles(times)
        progress(f"{label}: {result[label]}")

    timed("recent empty")
    ids = np.arange(args.rows, dtype=np.int64) + int(np.max(base.ids)) + 1
    with seg.lock:
        seg.add(ids, added)
    timed(f"{args.rows} coded rows in the recent segment")
    helper.shutdown()
    record(result, "recent_search")


if __name__ == "__main__":
    main()
