"""How real embeddings spread over directions, against bench/scale.py's synthetic vectors.

    python bench/spectrum.py                      # opencv-doc's photos, EfficientNet-Lite0
    python bench/spectrum.py --n 10000000         # synthetic draws as for a 10M library

An IVF search is as hard as the data's variation is spread out: when most of it lies along a
few directions, a vector's neighbours sit in the few lists around it; when it is spread evenly
over all 512 (isotropic noise), neighbours scatter over many lists. This embeds every photo of
Debian's opencv-doc (apt-get install opencv-doc; the bundled EfficientNet-Lite0, offline),
drops near-copies (cosine > 0.995), and reports for the real vectors and for --sample draws of
each of bench/scale.py's distributions: the directions holding 50/80/90/95% of the variance
(PCA after centring), the participation ratio (sum of variances squared over the sum of
squared variances: the number of directions that effectively vary), the TwoNN intrinsic
dimension (Facco et al. 2017: from each point's two nearest neighbours), the mean cosine of
random pairs and the median cosine to the nearest neighbour; and the power law the real
spectrum follows (variance of the k-th direction ~ k ** -power, fitted over its first 500).
Appends one JSON line to bench/out/spectrum.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cpu_model, progress, record  # noqa: E402
from scale import DISTRIBUTIONS, Vectors  # noqa: E402

PHOTOS = Path("/usr/share/doc/opencv-doc")
SUFFIXES = (".jpg", ".jpeg", ".png")
NEAR_COPY = 0.995
FIT_DIRECTIONS = 500


def real_vectors(folder: Path) -> np.ndarray:
    """Every readable photo of at least 48 px under `folder`, embedded by EfficientNet-Lite0."""
    from PIL import Image

    from imgsearch.embedders.cnn import EfficientNetLite0

    embedder = EfficientNetLite0("cpu")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    out, batch = [], []
    for path in files:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (448, 448))
                rgb = image.convert("RGB")
        except (OSError, ValueError):
            continue
        if min(rgb.size) >= 48:
            batch.append(rgb)
        if len(batch) == 64:
            out.append(embedder.embed_images(batch))
            batch = []
    if batch:
        out.append(embedder.embed_images(batch))
    progress(f"embedded {sum(len(o) for o in out):,} of {len(files):,} files")
    return np.concatenate(out)


def distinct(x: np.ndarray) -> np.ndarray:
    """Unit rows of `x` without near-copies (a row kept only if no earlier kept row is one)."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        if keep[i]:
            keep[i + 1 :] &= sims[i, i + 1 :] <= NEAR_COPY
    return x[keep]


def variances(x: np.ndarray) -> np.ndarray:
    """The share of the variance along each principal direction, largest first."""
    ev = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    return ev / ev.sum()


def describe(x: np.ndarray) -> dict[str, Any]:
    x = distinct(x)
    ev = variances(x)
    sims = x @ x.T
    np.fill_diagonal(sims, -2.0)
    top2 = -np.sort(-sims, axis=1)[:, :2]
    dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * top2))
    apart = dist[:, 0] > 1e-6
    mu = dist[apart, 1] / dist[apart, 0]
    pairs = (sims.sum(1) + 2.0) / (len(x) - 1)
    return {
        "n": len(x),
        "dim": x.shape[1],
        "directions_for": {
            f"{q:.0%}": int(np.searchsorted(np.cumsum(ev), q)) + 1 for q in (0.5, 0.8, 0.9, 0.95)
        },
        "participation_ratio": round(float(1.0 / (ev**2).sum()), 1),
        "twonn_dimension": round(float(len(mu) / np.log(mu).sum()), 1),
        "mean_cosine": round(float(pairs.mean()), 3),
        "nearest_cosine_p50": round(float(np.median(top2[:, 0])), 3),
    }


def power_law(x: np.ndarray) -> float:
    """The power p of variance ~ k ** -p over the first FIT_DIRECTIONS directions."""
    ev = variances(distinct(x))[:FIT_DIRECTIONS]
    slope = np.polyfit(np.log(np.arange(1, len(ev) + 1)), np.log(ev), 1)[0]
    return round(float(-slope), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--n", type=int, default=10_000_000, help="the synthetic library's size")
    parser.add_argument("--sample", type=int, default=2_300, help="synthetic vectors described")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict[str, Any] = {"bench": "spectrum", "cpu": cpu_model(), "n": args.n}
    real = real_vectors(args.photos)
    result["real"] = {"source": str(args.photos), **describe(real), "power": power_law(real)}
    progress(f"real: {result['real']}")
    for dist in DISTRIBUTIONS:
        result[dist] = describe(Vectors(args.n, 512, dist).chunk(0)[: args.sample])
        progress(f"{dist}: {result[dist]}")
    record(result, "spectrum")


if __name__ == "__main__":
    main()
