"""The IVF training's k-means: FAISS's float32 against imgsearch's bfloat16 assignment, same sample.

    python bench/kmeans.py --n 10000000          # the 10M library's training (12,649 lists)
    python bench/kmeans.py --n 1000000 --dist uniform

Draws the training sample the policy gives a library of N (`Policy.spec` lists,
`train_size` rows) from bench/scale.py's deterministic vectors (float16 as stored; only the
chunks the sample touches are generated), and clusters it both ways, both on every core, 10
iterations, spherical (as an inner-product IVF trains): FAISS's `Kmeans` (what
`index.train` runs) and `imgsearch.index.kmeans.spherical`. For each: seconds, and the
quality of the lists, measured exactly in float32 for both: the mean inner product of a
sample vector with its best centroid (k-means' objective; higher is better), FAISS's
imbalance factor of that assignment (1 when all lists are equal; a search pays for big
lists) and the lists left empty. bench/ivf_reach.py --train bf16 measures the recall an index
trained this way reaches. Appends one JSON line to bench/out/kmeans.jsonl.
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
from _common import cpu_model, progress, record  # noqa: E402
from scale import CHUNK, Vectors  # noqa: E402

from imgsearch.cpu import BF16_FLAGS, cpu_flags  # noqa: E402
from imgsearch.index import kmeans  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402

DIM = 512


def sample(vectors: Vectors, size: int) -> np.ndarray:
    """`size` of the N vectors, drawn without replacement, as stored (float16) in float32."""
    rng = np.random.default_rng(P.SEED)
    picked = np.sort(rng.choice(vectors.n, size, replace=False))
    out = np.empty((size, vectors.dim), np.float32)
    done = 0
    for i in np.unique(picked // CHUNK):
        rows = picked[(picked >= i * CHUNK) & (picked < (i + 1) * CHUNK)] - i * CHUNK
        out[done : done + len(rows)] = vectors.chunk(int(i))[rows].astype(np.float16)
        done += len(rows)
    return out


def quality(x: np.ndarray, centres: np.ndarray) -> dict[str, Any]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(centres, np.float32))
    sims, assign = index.search(x, 1)
    counts = np.bincount(assign[:, 0], minlength=len(centres))
    return {
        "objective": float(sims.mean()),
        "imbalance": float(
            faiss.imbalance_factor(
                len(assign), len(centres), faiss.swig_ptr(np.ascontiguousarray(assign[:, 0]))
            )
        ),
        "empty": int((counts == 0).sum()),
    }


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dist", choices=("clustered", "uniform"), default="clustered")
    args = parser.parse_args()
    spec = P.Policy().spec(args.n, DIM)
    size = P.train_size(spec.lists, args.n)
    flags = sorted(cpu_flags() & BF16_FLAGS)
    result: dict[str, Any] = {
        "bench": "kmeans", "cpu": cpu_model(), "bf16_flags": flags, "cores": os.cpu_count(),
        "load": os.getloadavg(), "n": args.n, "dist": args.dist, "lists": spec.lists,
        "sample": size,
    }  # fmt: skip
    progress(f"drawing {size:,} of {args.n:,} vectors ({spec.lists:,} lists)")
    x = sample(Vectors(args.n, DIM, args.dist), size)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    km = faiss.Kmeans(DIM, spec.lists, niter=kmeans.ITERATIONS, spherical=True, seed=P.SEED)
    km.train(x)
    result["faiss_fp32"] = {"s": time.perf_counter() - start, **quality(x, km.centroids)}
    progress(f"FAISS float32: {result['faiss_fp32']}")
    start = time.perf_counter()
    centres = kmeans.spherical(x, spec.lists, kmeans.ITERATIONS, P.SEED)
    result["bf16"] = {"s": time.perf_counter() - start, **quality(x, centres)}
    progress(f"bfloat16: {result['bf16']}")
    result["speedup"] = result["faiss_fp32"]["s"] / result["bf16"]["s"]
    result["load_after"] = os.getloadavg()
    progress(f"speed-up {result['speedup']:.2f}x (CPU bf16 flags: {flags or 'none'})")
    record(result, "kmeans")


if __name__ == "__main__":
    main()
