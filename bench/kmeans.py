"""The IVF training's k-means: FAISS's float32 against imgsearch's bfloat16 assignment, same sample.

    python bench/kmeans.py --n 10000000          # the 10M library's training (16,384 lists)
    python bench/kmeans.py --n 10000000 --lists 12649   # (the 10M lists of earlier versions)
    python bench/kmeans.py --n 1000000 --dist uniform
    python bench/kmeans.py --n 10000000 --blocks  # where an iteration's time goes
    python bench/kmeans.py --n 10000000 --two-level     # and the policy's two-level training
    python bench/kmeans.py --n 10000000 --two-level-only 2   # float32 under 1,024 centres or not

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

`--blocks` runs no k-means: from the centres of one bfloat16 iteration it times the parts of
the assignment on BLOCK_ROWS-row blocks (the bfloat16 product, the product in float32 for
comparison, each row's best CANDIDATES, their float32 second look), and compares the whole
sample's assignment (`assigning.Centres.assign`) with one taking every centre within a margin of the
bfloat16 best instead: seconds, candidates a row, rows whose list differs from the float32
argmax.

`--two-level` also trains the same lists as the daemon does from TWO_LEVEL_MIN_LISTS
(`kmeans.two_level`, bfloat16 where native): seconds and the same quality measures.
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
from scale import CHUNK, DISTRIBUTIONS, Vectors  # noqa: E402

from imgsearch.cpu import BF16_FLAGS, cpu_flags, native_amx, torch_threads  # noqa: E402
from imgsearch.index import assigning, kmeans  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402

DIM = 512
MARGINS = (0.004, 0.008, 0.0125)  # bfloat16 steps are ~0.004 near 0.8


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


def blocks(x: np.ndarray, lists: int) -> dict[str, Any]:
    """The assignment's parts, ms a block (median of BLOCKS), and margin assignments."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # as kmeans.train: every core
    centres = kmeans.spherical(x, lists, 1, P.SEED)
    rows = torch.from_numpy(x)
    low = rows.to(torch.bfloat16)
    exact = torch.from_numpy(centres)
    t = exact.to(torch.bfloat16).T.contiguous()
    tf = exact.T.contiguous()
    block = slice(0, assigning.BLOCK_ROWS)
    scores = torch.mm(low[block], t)
    cand = scores.topk(assigning.CANDIDATES, dim=1).indices
    parts = {
        "bf16_product": lambda: torch.mm(low[block], t),
        "fp32_product": lambda: torch.mm(rows[block], tf),
        "best_candidates": lambda: scores.topk(assigning.CANDIDATES, dim=1),
        "fp32_second_look": lambda: torch.bmm(exact[cand], rows[block, :, None]),
    }
    out: dict[str, Any] = {"block_ms": {k: _ms(f) for k, f in parts.items()}}
    flops = 2 * assigning.BLOCK_ROWS * x.shape[1] * lists
    out["bf16_tflops"] = flops / out["block_ms"]["bf16_product"] / 1e9
    out["fp32_tflops"] = flops / out["block_ms"]["fp32_product"] / 1e9
    truth = torch.from_numpy(x @ centres.T).argmax(dim=1)
    start = time.perf_counter()
    got = assigning.Centres(centres).assign(rows, low)
    out["best_4"] = {"s": time.perf_counter() - start, "differ": int((got != truth).sum())}
    for margin in MARGINS:
        start = time.perf_counter()
        got, per_row = _within(rows, low, exact, t, margin)
        took = time.perf_counter() - start
        differ = int((got != truth).sum())
        out[f"margin_{margin}"] = {"s": took, "candidates_a_row": per_row, "differ": differ}
    progress(f"blocks: {out}")
    return out


def _within(rows: Any, low: Any, exact: Any, t: Any, margin: float) -> tuple[Any, float]:
    """Each row's list: the float32 best of every centre whose bfloat16 score is within
    `margin` of the row's bfloat16 best (lowest id among exact ties)."""
    import torch

    out = torch.empty(rows.shape[0], dtype=torch.int64)
    pairs = 0
    for a in range(0, rows.shape[0], assigning.BLOCK_ROWS):
        b = min(a + assigning.BLOCK_ROWS, rows.shape[0])
        scores = torch.mm(low[a:b], t)
        floor = (scores.amax(dim=1, keepdim=True).float() - margin).to(torch.bfloat16)
        r, c = (scores >= floor).nonzero(as_tuple=True)
        pairs += len(r)
        sims = (rows[a:b][r] * exact[c]).sum(dim=1)
        best = torch.full((b - a,), -2.0).scatter_reduce(0, r, sims, "amax")
        win = sims == best[r]
        first = torch.full((b - a,), len(exact), dtype=torch.int64)
        out[a:b] = first.scatter_reduce(0, r[win], c[win], "amin")
    return out, pairs / rows.shape[0]


def _ms(f: Any, repeats: int = 8) -> float:
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def two_level_ab(
    x: np.ndarray, lists: int, bf16: bool, rounds: int, against: str = "bf16_everywhere"
) -> dict[str, Any]:
    """kmeans.two_level as the daemon runs it (this CPU's policy), and `against`: with
    bfloat16 assignments to any number of centres (FLOAT32_UNDER = 0), with the refining
    iterations assigned through the tree of centres (tree_from = policy.TREE_FROM, as where the
    CPU has no AMX), or with the coarse clusters fitted on every row (before 2026-12-06:
    COARSE_ROWS_PER_CLUSTER unbounded); alternating, `rounds` times each: seconds and
    quality."""
    runs: dict[str, list[dict[str, float]]] = {"as_daemon": [], against: []}
    under, tree_from = assigning.FLOAT32_UNDER, (P.NEVER if native_amx() else P.TREE_FROM)
    per = kmeans.COARSE_ROWS_PER_CLUSTER
    ways = {
        "as_daemon": (under, tree_from, per),
        "bf16_everywhere": (0, tree_from, per),
        "tree": (under, P.TREE_FROM, per),
        "coarse_every_row": (under, tree_from, len(x)),
    }
    try:
        for _ in range(rounds):
            for name in runs:
                assigning.FLOAT32_UNDER, tree, kmeans.COARSE_ROWS_PER_CLUSTER = ways[name]
                start = time.perf_counter()
                with torch_threads(os.cpu_count() or 1):
                    centres = kmeans.two_level(x, lists, bf16, P.SEED, tree_from=tree)
                runs[name].append({"s": time.perf_counter() - start, **quality(x, centres)})
                progress(f"two-level, {name}: {runs[name][-1]}")
    finally:
        assigning.FLOAT32_UNDER, kmeans.COARSE_ROWS_PER_CLUSTER = under, per
    best = {name: min(r["s"] for r in done) for name, done in runs.items()}
    return {**runs, "speedup": best[against] / best["as_daemon"]}


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")
    parser.add_argument("--blocks", action="store_true", help="the assignment's parts only")
    parser.add_argument("--lists", type=int, default=0, help="lists instead of the policy's")
    parser.add_argument("--two-level", action="store_true", help="kmeans.two_level as well")
    parser.add_argument(
        "--two-level-only", type=int, default=0, metavar="ROUNDS",
        help="only kmeans.two_level, ROUNDS times each way: as the daemon trains, and with "
        "every assignment in bfloat16 (FLOAT32_UNDER = 0, before 2026-12-04)",
    )  # fmt: skip
    parser.add_argument(
        "--against", choices=["bf16_everywhere", "tree", "coarse_every_row"],
        default="bf16_everywhere",
        help="--two-level-only's other way: every assignment in bfloat16, the refining "
        "iterations through the tree of centres (policy.TREE_FROM, the policy without AMX), "
        "or the coarse clusters fitted on every row (before 2026-12-06)",
    )  # fmt: skip
    args = parser.parse_args()
    spec = P.Policy().spec(args.n, DIM)
    if args.lists:
        spec = P.Spec(spec.kind, spec.factory, args.lists)
    size = P.train_size(spec.lists, args.n)
    flags = sorted(cpu_flags() & BF16_FLAGS)
    result: dict[str, Any] = {
        "bench": "kmeans", "cpu": cpu_model(), "bf16_flags": flags, "cores": os.cpu_count(),
        "load": os.getloadavg(), "n": args.n, "dist": args.dist, "lists": spec.lists,
        "sample": size,
    }  # fmt: skip
    progress(f"drawing {size:,} of {args.n:,} vectors ({spec.lists:,} lists)")
    x = sample(Vectors(args.n, DIM, args.dist), size)
    if args.blocks:
        result["blocks"] = blocks(x, spec.lists)
        record(result, "kmeans")
        return
    if args.two_level_only:
        result["two_level_ab"] = two_level_ab(
            x, spec.lists, bool(flags), args.two_level_only, args.against
        )
        record(result, "kmeans")
        return
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
    if args.two_level:
        start = time.perf_counter()
        with torch_threads(os.cpu_count() or 1):
            centres = kmeans.two_level(x, spec.lists, bool(flags), P.SEED)
        result["two_level"] = {"s": time.perf_counter() - start, **quality(x, centres)}
        progress(f"two-level ({'bf16' if flags else 'fp32'}): {result['two_level']}")
    result["load_after"] = os.getloadavg()
    progress(f"speed-up {result['speedup']:.2f}x (CPU bf16 flags: {flags or 'none'})")
    record(result, "kmeans")


if __name__ == "__main__":
    main()
