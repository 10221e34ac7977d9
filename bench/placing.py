"""What adding a vector to the 10M library's index costs: FAISS's add_with_ids (every centroid
scanned in float32) against imgsearch's placers (codes packed by imgsearch:
imgsearch/index/placing.py), whose lists are chosen by a bfloat16 product with every centre
(assigning.Centres) or through a tree of the centres (tree.CentreTree, float32).

    python bench/placing.py --rows 300000 --rounds 2
    python bench/placing.py --dist spectral --methods bf16 tree   # the placers only

The policy's index for 10M at 512-d (`IVF16384,PQ256x4fs`) is trained as the daemon trains it
(index/kmeans.py, its 10M sample size) on bench/scale.py's cached 10M clustered shards; then
ROWS other vectors are encoded in the import's batches (20,000 rows, each into an empty copy of
the template, as Segments.encode does) each way, in turn (order reversed every other round),
ROUNDS times: wall and CPU microseconds a row (all threads; FAISS's OpenMP team as the
daemon's import thread has it), the share of rows given the same list as the first method,
how much lower each row's list's centre scores than its best centre, and recall@10 of
bench/scale.py-style new-photo queries (at each --nprobe, 10x re-scoring with exact vectors)
against exact search over the rows added.
Prints one JSON object and appends it to bench/out/placing.jsonl.
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
from _common import OUT_DIR, progress, record, shard_vectors  # noqa: E402
from scale import K, machine  # noqa: E402

from imgsearch.cpu import native_bf16  # noqa: E402
from imgsearch.index import kmeans, rotation  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402
from imgsearch.index.codes import encoded, merge_into  # noqa: E402
from imgsearch.index.placing import Placer  # noqa: E402

DIM = 512
N = 10_000_000
BATCH = 20_000  # rows an import reads, checks and encodes at a time (bulk/imports.py)
METHODS = ("faiss", "bf16", "tree")


def shards(dist: str) -> Path:
    return OUT_DIR / f"scale-shards-open_clip_ViT-B-32_random-{dist}-{N}"


def fill(template: Any, x: np.ndarray, placer: Placer | None) -> tuple[Any, float, float]:
    """Every row of `x` encoded batch by batch, merged into one index: (index, wall s, CPU s
    of the encoding alone)."""
    import faiss

    whole = faiss.clone_index(template)
    wall = cpu = 0.0
    for first in range(0, len(x), BATCH):
        ids = np.arange(first, min(first + BATCH, len(x)), dtype=np.int64)
        start, started = time.perf_counter(), time.process_time()
        batch = encoded(template, ids, x[ids], placer)
        wall += time.perf_counter() - start
        cpu += time.process_time() - started
        merge_into(whole, batch)
    return whole, wall, cpu


def score_lost(x: np.ndarray, centres: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """How much lower each row's list's centre scores than its best centre (float32)."""
    out = np.empty(len(x), np.float32)
    for first in range(0, len(x), 10_000):
        scores = x[first : first + 10_000] @ centres.T
        chosen = scores[np.arange(len(scores)), lists[first : first + 10_000]]
        out[first : first + 10_000] = scores.max(axis=1) - chosen
    return out


def lists_of(index: Any) -> np.ndarray:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    out = np.empty(ivf.ntotal, np.int64)
    for i in range(ivf.nlist):
        n = ivf.invlists.list_size(i)
        if n:
            out[np.asarray(faiss.rev_swig_ptr(ivf.invlists.get_ids(i), n), np.int64)] = i
    return out


def recall(index: Any, x: np.ndarray, queries: np.ndarray, want: np.ndarray, nprobe: int) -> float:
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    _, found = index.search(queries, K * 10, params=params)
    hits = 0
    for q, f, w in zip(queries, found, want, strict=True):
        f = f[f >= 0]
        top = f[np.argsort(-(x[f] @ q))[:K]]
        hits += len(np.intersect1d(top, w))
    return hits / want.size


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--dist", choices=("clustered", "spectral"), default="clustered")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    spec = P.Policy().spec(N, DIM)
    sample = P.train_size(spec.lists, N)
    data = shard_vectors(shards(args.dist), sample + args.rows, DIM)
    train, x = data[:sample], data[sample:]
    factory, rotated = rotation.factory_of(spec.factory)
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    kmeans.train(index, train, native_bf16(), P.SEED, P.TWO_LEVEL_MIN_LISTS, codes=not rotated)
    index = rotation.train(index, train) if rotated else index
    out: dict[str, Any] = {"factory": spec.factory, "train_s": time.perf_counter() - start}
    out.update(rows=len(x), batch=BATCH, bf16_native=native_bf16(), dist=args.dist)
    progress(f"trained {spec.factory} on {sample:,} rows in {out['train_s']:.0f}s")
    del train, data
    bf16, tree = Placer.of(index, True, kmeans.NEVER), Placer.of(index, False, 0)
    placers = {"faiss": None, "bf16": bf16, "tree": tree}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in args.methods}
    built: dict[str, Any] = {}
    for r in range(args.rounds):
        for name in args.methods[:: 1 if r % 2 == 0 else -1]:
            whole, wall, cpu = fill(index, x, placers[name])
            times[name].setdefault("wall_us", []).append(wall / len(x) * 1e6)
            times[name].setdefault("cpu_us", []).append(cpu / len(x) * 1e6)
            built[name] = whole
            progress(f"round {r} {name}: {wall / len(x) * 1e6:.1f} us a row, {cpu:.1f} CPU s")
    for name, t in times.items():
        out[name] = {k: {"runs": v, "median": float(np.median(v))} for k, v in t.items()}
    first = args.methods[0]
    centres = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, spec.lists)
    for name in args.methods[1:]:
        for unit in ("cpu", "wall"):
            out[f"{unit}_ratio_{first}_{name}"] = (
                out[first][f"{unit}_us"]["median"] / out[name][f"{unit}_us"]["median"]
            )
        out[f"same_list_{name}"] = float(np.mean(lists_of(built[first]) == lists_of(built[name])))
    for name in args.methods:
        lost = score_lost(x, centres, lists_of(built[name]))
        out[f"score_lost_{name}"] = {"mean": float(lost.mean()), "max": float(lost.max())}
    rng = np.random.default_rng(777)
    src = x[rng.choice(len(x), args.queries, replace=False)]
    noise = rng.standard_normal(src.shape).astype(np.float32) / np.sqrt(DIM)
    queries = src + 0.5 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    want = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    for name, whole in built.items():
        out[f"{name}_imbalance"] = float(faiss.extract_index_ivf(whole).invlists.imbalance_factor())
        out[f"{name}_recall"] = {n: recall(whole, x, queries, want, n) for n in args.nprobe}
    progress(str(out))
    record({"bench": "placing", **machine(), **out}, "placing")


if __name__ == "__main__":
    main()
