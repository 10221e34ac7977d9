"""The index's tuning on a library where photos have copies (the same file in several folders).

    python bench/tuning_copies.py
    python bench/tuning_copies.py --n 4000 --shares 0 0.12 0.24 0.5

For each share of rows that are copies (groups of --copies identical vectors), --n clustered
32-d vectors are written into a new catalog whose index is IVF from 100 images (as the tests'
policy), the base is trained and tuned, and the tuning's choice is printed: nprobe of the
lists, re-scoring depth, the recall@10 it measured; then the recall@10 of searches by score
(a hit counts when it is as similar as the true 10th neighbour: copies tie, so which of them
are "the" 10 is arbitrary), over 200 of the vectors as queries. Also times the daemon's check
of 20,000 imported rows' paths against --allow-root roots (security.PathPolicy.allows_text,
as an import's batch runs it). Prints the CPU model and load; appends one JSON line to
bench/out/tuning_copies.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, record  # noqa: E402

from imgsearch.catalog import Catalog  # noqa: E402
from imgsearch.index import Policy  # noqa: E402
from imgsearch.security import PathPolicy  # noqa: E402
from imgsearch.store import FileFacts, NewImage  # noqa: E402

DIM = 32
QUERIES = 200


def library(n: int, share: float, copies: int, seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    for group in range(int(share * n) // copies):
        x[group * copies : (group + 1) * copies] = x[group * copies]
    return x


def one(n: int, share: float, copies: int) -> dict[str, Any]:
    vectors = library(n, share, copies)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp), "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
        items = [
            NewImage(FileFacts(f"/v/{i}.jpg", 1, 1, f"h{i}", 1, 1), v)
            for i, v in enumerate(vectors)
        ]
        catalog.put(items)
        catalog.index.rebase()
        about = catalog.index.describe()
        lists = int(about["factory"].split("IVF")[1].split(",")[0].split("_")[0])
        queries = vectors[:: max(1, n // QUERIES)][:QUERIES]
        found = catalog.nearest(queries, 11)
        kth = -np.sort(-(queries @ vectors.T), axis=1)[:, 10]
        by_score = np.mean(
            [np.mean([h.similarity >= kth[q] - 1e-5 for h in hits]) for q, hits in enumerate(found)]
        )
        catalog.close()
    return {
        "copies_share": share,
        "factory": about["factory"],
        "lists": lists,
        "nprobe": about["nprobe"],
        "rescore": about.get("rescore"),
        "tuned_recall_at_10": about["recall_at_10"],
        "recall_at_10_by_score": round(float(by_score), 4),
    }


def path_check_ms(rows: int = 20_000) -> dict[str, float]:
    paths = [f"/photos/{i // 1000}/{i}.jpg" for i in range(rows)]
    out = {}
    for name, policy in (("roots", PathPolicy([Path("/photos")])), ("no_roots", PathPolicy())):
        start = time.perf_counter()
        refused = [p for p in paths if not policy.allows_text(p)]
        out[name] = round((time.perf_counter() - start) * 1000, 2)
        assert not refused
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=12)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.12, 0.24])
    args = parser.parse_args()
    runs = []
    for share in args.shares:
        runs.append(one(args.n, share, args.copies))
        print(runs[-1], flush=True)
    checks = path_check_ms()
    print("path check of 20,000 rows, ms:", checks)
    record(
        {
            "cpu": cpu_model(),
            "load": os.getloadavg(),
            "n": args.n,
            "runs": runs,
            "paths_ms": checks,
        },
        "tuning_copies",
    )


if __name__ == "__main__":
    main()
