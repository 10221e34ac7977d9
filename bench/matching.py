"""SIFT descriptor matching, fp32 product against int8: one query against real photos.

The same process, the same keypoints, one BLAS and one torch thread (as in the compare pool):
CPU ms per candidate of `ratio_matches` with each product, best of a few rounds, and whether
the matches are identical. Photos: the opencv-doc examples (apt-get install -y opencv-doc),
else scikit-image's, at the comparators' working size.

    .venv/bin/python bench/matching.py [--candidates 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _common import cpu_model
from PIL import Image

from imgsearch.comparators import WORKING_SIZE, Picture
from imgsearch.comparators.distances import int8_native
from imgsearch.comparators.keypoints import Keypoints, limit_blas_threads, ratio_matches
from imgsearch.comparators.sift import LOWE_RATIO, sift_keypoints

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")


def photos(count: int) -> list[Image.Image]:
    """Up to `count` RGB photos, shorter side at most the working size."""
    files = sorted(OPENCV_DOC.glob("*.jpg"))[:count]
    if files:
        images = [Image.open(f).convert("RGB") for f in files]
    else:
        from skimage import data

        names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "page")
        images = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in names[:count]]
    for image in images:
        image.thumbnail((WORKING_SIZE * 4, WORKING_SIZE))
    return images


def cpu_ms(query: Keypoints, candidates: Sequence[Keypoints], int8: bool, rounds: int) -> float:
    """Best-of-rounds CPU ms (this thread) to match the query against every candidate."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for candidate in candidates:
            ratio_matches(query, candidate, LOWE_RATIO, int8=int8)
        best = min(best, (time.thread_time() - start) * 1000)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    limit_blas_threads()
    load = os.getloadavg()[0]
    sets = [sift_keypoints(Picture.from_pil(p)) for p in photos(args.candidates + 1)]
    query, candidates = sets[0], sets[1:]
    same = all(
        np.array_equal(
            ratio_matches(query, c, LOWE_RATIO, int8=True),
            ratio_matches(query, c, LOWE_RATIO, int8=False),
        )
        for c in candidates
    )
    fp32 = cpu_ms(query, candidates, False, args.rounds)
    int8 = cpu_ms(query, candidates, True, args.rounds)
    n = len(candidates)
    print(f"CPU: {cpu_model()}; int8 native here: {int8_native()}")
    print(f"{n} candidates, {np.mean([len(c) for c in candidates]):.0f} keypoints on average")
    print(f"(1-minute load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end)")
    print(f"fp32 product: {fp32:.1f} CPU ms ({fp32 / n:.2f} per candidate)")
    print(f"int8 product: {int8:.1f} CPU ms ({int8 / n:.2f} per candidate), {fp32 / int8:.2f}x")
    print(f"identical matches: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
