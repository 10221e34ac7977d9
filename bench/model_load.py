"""Building an open_clip model from a checkpoint: open_clip's plain path against imgsearch's
(no random init, the file memory-mapped), each the first build of a fresh process, in turns.

    python bench/model_load.py                 # ViT-B-32, 5 rounds
    python bench/model_load.py --rounds 3

The checkpoint is bench/startup.py's: the seeded random ViT-B-32 saved once to bench/out/.
Each round times, A B A B: `plain`, open_clip.create_model_and_transforms(pretrained=FILE);
`imgsearch`, embedders/clip.py's `_create_loaded` (the same call under SkipRandomInit and a
memory-mapped torch.load, then the NaN check); and, to split the plain path's cost, `random`,
the same model built with random weights (no file) and `skipped`, built under SkipRandomInit
(no file): random - skipped is the random fills' cost. Each is timed in a new Python process
after its imports, as the daemon builds its model once, first (a second build in one process
reuses memory the first touched and takes a fraction of the time).
Prints one JSON object (medians, and the plain / imgsearch ratio per round) and appends it to
bench/out/model_load.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import progress, record  # noqa: E402
from scale import machine  # noqa: E402
from startup import saved_checkpoint  # noqa: E402

MODEL = "ViT-B-32"
WAYS = ("plain", "imgsearch", "random", "skipped")


def one(way: str, path: str) -> float:
    """Seconds of one build the `way` names (imports before the clock)."""
    import open_clip

    from imgsearch.embedders.clip import _create_loaded
    from imgsearch.embedders.weights import SkipRandomInit

    start = time.perf_counter()
    if way == "plain":
        open_clip.create_model_and_transforms(MODEL, pretrained=path)
    elif way == "imgsearch":
        assert _create_loaded(MODEL, path, "cpu") is not None  # this path, not the fall-back
    elif way == "random":
        open_clip.create_model(MODEL, pretrained=None)
    else:
        with SkipRandomInit():
            open_clip.create_model(MODEL, pretrained=None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)  # a child's build
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(one(args.one, args.path))
        return
    path = str(saved_checkpoint())
    runs: dict[str, list[float]] = {name: [] for name in WAYS}
    for r in range(args.rounds):
        for name in WAYS:
            child = [sys.executable, __file__, "--one", name, "--path", path]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            runs[name].append(float(done.stdout.split()[-1]))
        progress(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()))
    medians = {name: statistics.median(seconds) for name, seconds in runs.items()}
    out: dict[str, Any] = {
        "machine": machine(),
        "model": MODEL,
        "checkpoint_bytes": Path(path).stat().st_size,
        "median_s": medians,
        "random_fills_s": medians["random"] - medians["skipped"],
        "plain_over_imgsearch_median": statistics.median(
            p / i for p, i in zip(runs["plain"], runs["imgsearch"], strict=True)
        ),
        "runs": runs,
    }
    record(out, "model_load")


if __name__ == "__main__":
    main()
