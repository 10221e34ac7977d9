"""What the daemon's gc.freeze() and its young-generation threshold (cli.serve, after
start-up: cli._tune_interpreter) save a bulk import.

    python bench/gc_freeze.py --rounds 3

Loads what a daemon holds (torch, open_clip's ViT-B-32 with random weights, FAISS, the web
app's modules), then builds the rows of 20,000-row import batches (`bulk.imports.to_rows`:
columns since 2026-12-05, a stand-in hash string a row and no container a row; before it,
`to_images` made ~2 tracked objects a row), two batches alive at a time as in the import's
pipeline, with the start-up heap tracked by the garbage collector, frozen out of it
(gc.freeze / gc.unfreeze), and frozen with the daemon's young-generation threshold
(cli.GC_YOUNG allocations between collections of the youngest generation, Python's default
700), in turn, ROUNDS times: CPU seconds a batch and the full collections run. Prints one
JSON object and appends it to bench/out/gc_freeze.jsonl.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cpu_model, progress, record  # noqa: E402

BATCH = 20_000
BATCHES = 40


def build(batch: Any) -> tuple[float, int]:
    """CPU seconds a batch, and full collections run, over BATCHES batches."""
    from imgsearch.bulk.imports import to_rows

    full = gc.get_stats()[2]["collections"]
    alive: list[Any] = []
    start = time.process_time()
    for _ in range(BATCHES):
        alive.append(to_rows(batch))
        if len(alive) > 2:
            alive.pop(0)
    return (time.process_time() - start) / BATCHES, gc.get_stats()[2]["collections"] - full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import faiss  # noqa: F401
    import open_clip

    import imgsearch.web  # noqa: F401
    from imgsearch.bulk.format import RowBatch

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    rng = np.random.default_rng(0)
    batch = RowBatch(
        rows=list(range(BATCH)),
        paths=[f"/archive/{i:08d}.jpg" for i in range(BATCH)],
        vectors=rng.standard_normal((BATCH, 512)).astype(np.float32),
    )
    gc.collect()
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg()}
    out["tracked"] = len(gc.get_objects())  # what a full collection scans, the model's included
    from imgsearch.cli import GC_YOUNG

    default = gc.get_threshold()
    out["thresholds"] = {"default": default[0], "young": GC_YOUNG}
    runs: dict[str, list[dict[str, float]]] = {"tracked": [], "frozen": [], "frozen_young": []}
    for _ in range(args.rounds):
        for name in runs:
            if name != "tracked":
                gc.freeze()
            if name == "frozen_young":
                gc.set_threshold(GC_YOUNG, *default[1:])
            seconds, full = build(batch)
            gc.unfreeze()
            gc.set_threshold(*default)
            runs[name].append({"cpu_ms_a_batch": round(seconds * 1e3, 1), "full_collections": full})
            progress(f"{name}: {runs[name][-1]}")
    best = {name: min(r["cpu_ms_a_batch"] for r in done) for name, done in runs.items()}
    out.update(
        runs=runs,
        ratio=round(best["tracked"] / best["frozen"], 2),
        ratio_young=round(best["frozen"] / best["frozen_young"], 2),
        model=type(model).__name__,
    )
    print(out)
    record(out, "gc_freeze")


if __name__ == "__main__":
    main()
