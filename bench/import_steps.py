"""The per-row steps of a bulk import's batch, each timed alone on one 20,000-row batch of
512-d float16 rows (bench/scale.py's shard format), on one thread and on two: the checks of a
Parquet batch (`format.check_batch`: float32, norms, unit length) and of its store rows
(`checks.check_rows`), the float16 blobs the store writes (`upsert._blobs`), picking each row's
candidate lists from its bfloat16 scores against 16,384 centres (`Centres._best`, a 512-row
block), and packing the batch's fast-scan codes into 16,384 lists (`Placer._pack`).

Run it on two trees (a `git worktree` of the one before) to compare them: it calls the same
functions by name, whatever they do inside.

    python bench/import_steps.py [--rounds 7]

Prints microseconds a row (best of ROUNDS) and appends one JSON object to
bench/out/import_steps.jsonl.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import progress, record  # noqa: E402
from scale import machine  # noqa: E402

DIM = 512
ROWS = 20_000  # an import's batch (bulk/imports.py)
LISTS = 16_384  # the 10M library's lists
BLOCK = 512  # rows scored against every centre at once (assigning.BLOCK_SCORES / LISTS)


def best_of(step: Callable[[], Any], rounds: int, rows: int) -> float:
    step()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return round(min(times) / rows * 1e6, 3)


def steps() -> dict[str, tuple[Callable[[], Any], int]]:
    """Each step as (a call, the rows it handles)."""
    import faiss
    import pyarrow as pa
    import torch

    from imgsearch.bulk.format import ShardInfo, check_batch
    from imgsearch.bulk.imports import to_rows
    from imgsearch.index.assigning import Centres
    from imgsearch.index.placing import Placer
    from imgsearch.ingest.checks import check_rows
    from imgsearch.store.upsert import _blobs

    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), DIM)
    paths = pa.array([f"/photos/{i // 1000}/{i}.jpg" for i in range(ROWS)])
    batch = pa.RecordBatch.from_arrays([paths, vectors], ["path", "vector"])
    info = ShardInfo(Path("shard.parquet"), "ViT-B-32", DIM, ROWS)
    rows = to_rows(check_batch(batch, info, 0))

    # Scores as a batch's block has them: near 0 around each row's best (the offset), bfloat16.
    scores = torch.from_numpy(rng.normal(-0.1, 0.05, (BLOCK, LISTS)).astype(np.float32))
    scores = scores.to(torch.bfloat16)
    centres = rng.standard_normal((LISTS, DIM)).astype(np.float32)
    best = Centres(centres)._best

    # The 10M index's code layout (PQ256x4fs: it does not depend on the lists) and a batch's
    # codes sorted into 16,384 lists at random.
    template = faiss.index_factory(DIM, "IVF64,PQ256x4fs", faiss.METRIC_INNER_PRODUCT)
    template.train(x[:5_000])
    placer = Placer.of(template)
    assert placer is not None
    lists = np.sort(rng.integers(0, LISTS, ROWS))
    codes = rng.integers(0, 256, (ROWS, placer.code_size)).astype(np.uint8)
    heads = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]])
    counts = np.diff(np.r_[heads, ROWS])
    blocks = (counts + placer.slots - 1) // placer.slots

    return {
        "check_batch": (lambda: check_batch(batch, info, 0), ROWS),
        "check_rows": (lambda: check_rows(rows, DIM), ROWS),
        "float16_blobs": (lambda: _blobs(x), ROWS),
        "candidates": (lambda: best(scores, 3), BLOCK),
        "pack": (lambda: placer._pack(codes, heads, counts, blocks), ROWS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from imgsearch.cpu import torch_threads

    tree = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout.strip()  # fmt: skip
    result: dict[str, Any] = {"tree": tree, **machine(), "rows": ROWS, "us_per_row": {}}
    todo = steps()
    for threads in (1, 2):
        with torch_threads(threads):
            for name, (step, rows) in todo.items():
                us = best_of(step, args.rounds, rows)
                result["us_per_row"][f"{name}@{threads}"] = us
                progress(f"{name} on {threads} thread(s): {us} us a row")
    record(result, "import_steps")


if __name__ == "__main__":
    main()
