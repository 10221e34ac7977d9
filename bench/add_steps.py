"""Where an add's time goes at a given dimension: one import batch's steps, each timed alone.

    python bench/add_steps.py --centres /work/big/adhoc/ref1280.npy \
        --shards bench/out/scale-shards-efficientnet-lite0_imagenet-clustered-1000000
    python bench/add_steps.py --data /work/big/K10/data --n 10000000 --dist spectral

The centres are a trained index's lists: --data, a library bench/scale.py --keep left (its
newest base's, as bench/tree_dims.py reads them), or --centres, a .npy of k x d centres. Rows
from the middle of the shards (ones the lists were not trained on) are placed in the import's
20,000-row batches, each step on FAISS's team of the machine's cores as an encoder runs it:

- `tree`: tree.CentreTree's choice of each row's list (and the share of centres it estimates a
  row is compared with: over tree.MAX_SHARE_WORTH the index does not use it);
- `bf16`: assigning.Centres, the bfloat16 product of every centre, the best again in float32;
- `faiss`: FAISS's float32 search of every centre (faiss.knn);
- `encode`: FAISS's fast-scan PQ codes of dim / 2 sub-quantizers by residual to the chosen
  lists (`encode_vectors`), the codebooks trained on 20,000 of the rows;
- `fine`: the fine codes (index/fine.py), trained on the same 20,000.

Prints microseconds a row, wall and CPU (the best of --rounds, steps in turn), which of the
three choosers the daemon's `assigning.assigner` takes for these centres on this CPU, and the
share of rows each chooser gives their nearest centre; appends one JSON line to
bench/out/add_steps.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, cpu_model, progress, record, shard_vectors  # noqa: E402
from tree_dims import lists_arguments, lists_of  # noqa: E402

from imgsearch.cpu import faiss_team, native_bf16  # noqa: E402
from imgsearch.index import assigning  # noqa: E402
from imgsearch.index import fine as F  # noqa: E402
from imgsearch.index import tree as T  # noqa: E402

BATCH = 20_000


def timed(step: Callable[[], Any], rows: int) -> tuple[Any, float, float]:
    """(result, wall µs a row, CPU µs a row) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = step()
    return out, (time.perf_counter() - wall) * 1e6 / rows, (time.process_time() - cpu) * 1e6 / rows


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    lists_arguments(parser, 1_000_000)
    parser.add_argument("--batches", type=int, default=2, help="20,000-row batches a step")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    centres, shards = lists_of(parser, args)
    k, dim = centres.shape
    n = args.batches * BATCH
    middle = min(args.n // 2, 5_000_000)
    x = shard_vectors(shards, max(middle, n + BATCH), dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows, sample = x[-n:], x[-n - BATCH : -n]
    best = faiss.knn(rows, centres, 1, faiss.METRIC_INNER_PRODUCT)[1][:, 0]
    out: dict[str, Any] = {
        "cpu": cpu_model(), "load": os.getloadavg(), "bf16": native_bf16(), "lists": k,
        "dim": dim, "rows": n, "data": str(args.data or args.centres), "shards": str(shards),
    }  # fmt: skip
    progress(f"{k} centres x {dim}, {n} rows; making the choosers")
    with faiss_team():
        started = time.perf_counter()
        tree = T.CentreTree(centres)
        out["tree_built_s"], out["tree_share"] = time.perf_counter() - started, tree.share
        chosen = assigning.assigner(centres, native_bf16(), True)
        out["assigner"] = "none (FAISS)" if chosen is None else type(chosen).__name__
        product = assigning.Centres(centres)
        index = faiss.index_factory(dim, f"IVF{k},PQ{dim // 2}x4fs", faiss.METRIC_INNER_PRODUCT)
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.quantizer.add(centres)
        index.train(sample)
        fine = F.Fine.train(sample, Path(tempfile.mkdtemp(dir=OUT_DIR)))
        lists = best.astype(np.int64)
        codes = np.empty((n, ivf.code_size), np.uint8)

        def batches(f: Callable[[np.ndarray], Any]) -> Callable[[], Any]:
            return lambda: np.concatenate([f(rows[i : i + BATCH]) for i in range(0, n, BATCH)])

        def encode() -> None:
            ivf.encode_vectors(
                n, faiss.swig_ptr(rows), faiss.swig_ptr(lists), faiss.swig_ptr(codes), False
            )

        steps: dict[str, Callable[[], Any]] = {
            "tree": batches(tree.nearest),
            "bf16": batches(product.nearest),
            "faiss": batches(
                lambda b: faiss.knn(b, centres, 1, faiss.METRIC_INNER_PRODUCT)[1][:, 0]
            ),
            "encode": encode,
            "fine": batches(fine.encode),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
        for r in range(args.rounds):
            for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
                got, wall, cpu = timed(steps[name], n)
                times[name].append((wall, cpu))
                if name in ("tree", "bf16", "faiss"):
                    out[f"{name}_nearest"] = float(np.mean(got == best))
                progress(f"{name}: {wall:.1f} µs a row ({cpu:.1f} CPU)")
    out["us_a_row"] = {name: min(t) for name, t in times.items()}
    record(out, "add_steps")


if __name__ == "__main__":
    main()
