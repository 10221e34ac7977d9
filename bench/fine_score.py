"""Ranking a search's pool by its fine codes, on a kept library's saved codes: scored whole or
in parts, on one thread or half on a helper.

    python bench/fine_score.py --data /work/big/K1280/data            # bench/scale.py --keep's
    python bench/fine_score.py --data /work/big/K10/data --pool 2000 --queries 400

Opens the newest saved base of DATA_DIR (nothing in it is written), faults its fine codes into
memory as the daemon does at start-up, and for each of --queries random unit queries takes
--pool random stored ids (a search's candidates lie anywhere in the table) and times, with the
caches cold (a 256 MB array written between the steps, as the scan of the probed lists leaves
them in the daemon), p50 / p90 ms:
- the read of their rows, and their scores made whole (`quantizers.SCORE_PART_BYTES` above
  the pool's size) and in the daemon's parts;
- `Fine.rank` of the pool to 40 (the read, the scores in parts, the partition) on one thread,
  against a helper thread reading and scoring half the pool (the query's weights made once,
  as a lone search's scan is split; sys.setswitchinterval as the daemon sets it; measured,
  not taken), checking both keep the same ids.
Prints the CPU model and load; appends one JSON line to bench/out/fine_score.jsonl.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cpu_model, percentiles, progress, record  # noqa: E402

from imgsearch.cli import SWITCH_INTERVAL_S  # noqa: E402
from imgsearch.index import base as B  # noqa: E402
from imgsearch.index import quantizers as Q  # noqa: E402

KEEP = 40  # what a 1280-d search at 4 x k re-scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pool", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    folder = B.saved(args.data / "index")[0]
    meta = json.loads((folder / B.META).read_text())
    base = B.load(folder, meta["model_id"], meta["dim"])
    fine = base.fine
    if fine is None:
        raise SystemExit(f"{folder}: no fine codes")
    fine.table.warm(threading.Event())
    quantizer = fine.quantizer
    progress(f"{folder.name}: {quantizer.describe()}, {fine.table.row_bytes} B a row")
    parts_bytes = Q.SCORE_PART_BYTES
    junk = np.ones(64 << 20, np.float32)  # 256 MB
    helper = ThreadPoolExecutor(1)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {}

    def timed(name: str, start: float) -> None:
        times.setdefault(name, []).append((time.perf_counter() - start) * 1000)

    for _ in range(args.queries):
        ids = base.ids[rng.integers(0, len(base.ids), args.pool)]
        q = rng.standard_normal(meta["dim"]).astype(np.float32)
        q /= np.linalg.norm(q)
        junk += 1
        start = time.perf_counter()
        codes = fine.table.get(ids)
        timed("read", start)
        scored = {}
        for name, part in (("scores whole", 1 << 40), ("scores in parts", parts_bytes)):
            Q.SCORE_PART_BYTES = part
            junk += 1
            start = time.perf_counter()
            scored[name] = quantizer.scores(codes, q)
            timed(name, start)
        Q.SCORE_PART_BYTES = parts_bytes
        assert np.allclose(scored["scores whole"], scored["scores in parts"], rtol=1e-5, atol=1e-5)
        junk += 1
        start = time.perf_counter()
        one = set(fine.rank(q[None], ids[None], KEEP)[0].tolist())
        timed("rank, one thread", start)
        junk += 1
        start = time.perf_counter()
        weights, half = quantizer.weights(q), len(ids) // 2
        other = helper.submit(
            lambda part, w=weights: quantizer.scored(fine.table.get(part), w), ids[half:]
        )
        approx = np.concatenate(
            [quantizer.scored(fine.table.get(ids[:half]), weights), other.result()]
        )
        split = set(ids[np.argpartition(-approx, KEEP - 1)[:KEEP]].tolist())
        timed("rank, half on a helper", start)
        assert one == split
    helper.shutdown()
    out: dict[str, Any] = {
        "cpu": cpu_model(), "load": os.getloadavg(), "data": str(args.data),
        "fine_codes": quantizer.describe(), "pool": args.pool,
    }  # fmt: skip
    print(f"{cpu_model()}, load {os.getloadavg()[0]:.2f}; {quantizer.describe()}, pool {args.pool}")
    for name, values in times.items():
        warm = values[len(values) // 8 :]  # the first eighth a warm-up
        out[name] = {"p50": float(np.percentile(warm, 50)), "p90": float(np.percentile(warm, 90))}
        print(f"{name:<24} p50 {out[name]['p50']:.3f} ms  p90 {out[name]['p90']:.3f} ms")
    out["percentiles"] = {name: percentiles(values) for name, values in times.items()}
    record(out, "fine_score")


if __name__ == "__main__":
    main()
