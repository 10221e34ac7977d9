"""Lists trained on the vectors as they are or less their mean (Policy.centred), side by side.

    python bench/centred_lists.py --n 3000000
    python bench/centred_lists.py --n 1000000 --dist spectral

bench/scale.py's cached shards (`--shards-only` writes them), the policy's lists and training
sample for N, this machine's policy (Config().index_policy(): bfloat16, tree of centres). For
each kind: the k-means' seconds (kmeans.train, lists only), the lists' imbalance over the
sample, which placer the adds would use (placing.Placer: `Centres`, every centre compared in
bfloat16, or `CentreTree`), and the share of the residuals' variance a rotated code's
directions hold (rotation.coded_share, which picks rotated codes from MIN_CODED_SHARE).
Prints the CPU and load; appends one JSON line to bench/out/centred_lists.jsonl.
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
from _common import OUT_DIR, cpu_model, progress, record, shard_vectors  # noqa: E402
from scale import DISTRIBUTIONS  # noqa: E402

from imgsearch.config import Config  # noqa: E402
from imgsearch.index import kmeans, rotation  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402
from imgsearch.index.placing import Placer  # noqa: E402

DIM = 512


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")
    args = parser.parse_args()
    folder = OUT_DIR / f"scale-shards-open_clip_ViT-B-32_random-{args.dist}-{args.n}"
    x = shard_vectors(folder, args.n, DIM)
    policy = Config().index_policy()
    spec = policy.spec(args.n, DIM)
    rng = np.random.default_rng(P.SEED)
    picked = np.sort(rng.choice(args.n, P.train_size(spec.lists, args.n), replace=False))
    sample = np.ascontiguousarray(x[picked], np.float32)
    del x
    out: dict[str, Any] = {
        "cpu": cpu_model(), "load": os.getloadavg(), "n": args.n, "dist": args.dist,
        "lists": spec.lists, "sample": len(sample), "runs": {},
    }  # fmt: skip
    m = P.PQ_DIMS_PER_CODE
    for centred in (False, True):
        index = faiss.index_factory(
            DIM, f"IVF{spec.lists},PQ{DIM // m}x4fs", faiss.METRIC_INNER_PRODUCT
        )
        started = time.monotonic()
        assign = kmeans.train(
            index, sample, policy.train_bf16, P.SEED, policy.two_level_min_lists,
            policy.tree_from, codes=False, centred=centred,
        )  # fmt: skip
        seconds = time.monotonic() - started
        ivf = faiss.extract_index_ivf(index)
        found = ivf.quantizer.search(sample, 1)[1][:, 0]
        sizes = np.bincount(found, minlength=spec.lists).astype(np.float64)
        placer = Placer.of(index, policy.train_bf16, policy.tree_from, group_threads=None)
        run = {
            "kmeans_s": seconds,
            "imbalance": float(len(sizes) * (sizes**2).sum() / sizes.sum() ** 2),
            "placer": type(placer.centres).__name__ if placer is not None else "FAISS",
            "coded_share": rotation.coded_share(index, sample, assign),
        }
        progress(f"{'centred' if centred else 'plain'}: {run}")
        out["runs"]["centred" if centred else "plain"] = run
    record({"bench": "centred_lists", **out}, "centred_lists")


if __name__ == "__main__":
    main()
