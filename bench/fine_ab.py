"""Fine codes compared on a kept library: how many of a search's candidates must be re-scored
from the store for the true top 10, ranked by each kind of code.

    python bench/fine_ab.py --data DATA_DIR --n 10000000 --dist spectral --truth 200

DATA_DIR is a library bench/scale.py --keep left. For each query (bench/scale.py's new photos,
the first --truth, whose exact top 10 over the stored rows bench/search_profile.py computes and
caches), the saved base is searched as the daemon searches it (its nprobe, a pool of
fine.POOL x k candidates, one thread); the candidates' exact vectors are read from the store.
Then each quantizer ranks every query's pool and the script reports recall@10 if the best
depth x k by it were re-scored exactly (depth 2 ... 25), and the ms to rank a pool:

- the base's own fine codes as saved (quantizers.Nibbles for bases saved before 2026-12-05),
- FAISS's SQ4 and the 4-bit / 8-bit allotments quantizers.train tries, each trained on
  --sample stored rows (the last one is the one it chooses, marked),
- exact scores (the ceiling: the pool's own recall).

`--pools` measures the pool instead: for each --nprobe and each --pool (candidates asked of
the IVF), the scan's ms a query on one thread, the ranking's by the base's fine codes, the
pool's recall@10 and that of its best 4 x k by the fine codes.

`--encode` times encoding instead, as an import does it (batches of 2,000 stored rows, 10 ms
apart): the chosen quantizer's encode (FAISS's pieces), the same codes by numpy (its product on
numpy's OpenBLAS, whose threads spin between calls) and FAISS's SQ4, at FAISS's default
OpenMP team and at one thread: wall and CPU µs a row.

Appends one JSON line to bench/out/fine_ab.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from scale import MODELS, library_args, library_queries  # noqa: E402
from search_profile import exact_truth_ids  # noqa: E402

from imgsearch.catalog import DB_FILE  # noqa: E402
from imgsearch.index import base as B  # noqa: E402
from imgsearch.index import fine as F  # noqa: E402
from imgsearch.index import quantizers as Q  # noqa: E402
from imgsearch.index.segments import Segments  # noqa: E402
from imgsearch.store.images import vector_chunks  # noqa: E402

K = 10
DEPTHS = (2, 3, 4, 6, 10, 25)


def rows(conn: sqlite3.Connection, ids: list[int], dim: int) -> dict[int, np.ndarray]:
    """Stored vectors of `ids` (float16 as stored, as float32)."""
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        query = f"SELECT id, vector FROM images WHERE id IN ({marks})"
        for i, blob in conn.execute(query, part):
            out[int(i)] = np.frombuffer(blob, np.float16).astype(np.float32)
    return out


def sample_rows(conn: sqlite3.Connection, count: int, dim: int) -> np.ndarray:
    """`count` stored vectors from the middle of the table (the library's order is random)."""
    top = conn.execute("SELECT max(id) FROM images").fetchone()[0]
    cursor = conn.execute(
        "SELECT id, vector FROM images WHERE id > ? AND missing=0 LIMIT ?", (top // 3, count)
    )
    return np.concatenate([chunk.vectors for chunk in vector_chunks(cursor, 50_000, dim)])


def allotments(sample: np.ndarray) -> list[tuple[str, Q.Quantizer]]:
    """FAISS's SQ4 and each allotment quantizers.train weighs, trained on `sample`."""
    import faiss

    sq4 = faiss.index_factory(sample.shape[1], "SQ4", faiss.METRIC_INNER_PRODUCT)
    sq4.train(sample)
    chosen = Q.train(sample)
    out: list[tuple[str, Q.Quantizer]] = [("FAISS SQ4", Q.Nibbles(sq4))]
    dim = sample.shape[1]
    for share in Q.WIDE_SHARES:
        wide = dim // share if share else 0
        out.append((f"PCA {wide} x 8 bits", forced(sample, wide)))
    out.append((f"chosen: {chosen.describe()}", chosen))
    return out


def forced(sample: np.ndarray, wide: int) -> Q.Quantizer:
    """An allotment with `wide` directions at 8 bits (as quantizers.train makes them)."""
    shares = Q.WIDE_SHARES
    try:
        Q.WIDE_SHARES = (sample.shape[1] // wide,) if wide else (0,)  # type: ignore[misc]
        made = Q.train(sample)
    finally:
        Q.WIDE_SHARES = shares  # type: ignore[misc]
    return made


def numpy_encode(quantizer: Q.Allotted, x: np.ndarray) -> np.ndarray:
    """quantizer.encode(x) by numpy alone (its first form)."""
    z = x - quantizer.mean
    z = z if quantizer.rotation is None else z @ quantizer.rotation
    w = quantizer.wide
    levels = np.where(np.arange(len(quantizer.lo)) < w, 255, 15).astype(np.float32)
    c = np.clip(np.floor((z - quantizer.lo) / quantizer.step), 0, levels).astype(np.uint8)
    out = np.zeros((len(x), quantizer.code_size), np.uint8)
    out[:, :w] = c[:, :w]
    out[:, w : w + (c.shape[1] - w + 1) // 2] = c[:, w::2]
    out[:, w : w + (c.shape[1] - w) // 2] |= c[:, w + 1 :: 2] << 4
    return out


def encoding(sample: np.ndarray) -> dict[str, Any]:
    """Wall and CPU µs a row of each way of encoding, batches 10 ms apart."""
    import faiss

    chosen = Q.train(sample)
    assert isinstance(chosen, Q.Allotted)
    sq4 = faiss.index_factory(sample.shape[1], "SQ4", faiss.METRIC_INNER_PRODUCT)
    sq4.train(sample)
    batch, rounds, gap = sample[:2000], 100, 0.01
    ways = {
        f"chosen ({chosen.describe()})": lambda: chosen.encode(batch),
        "the same by numpy": lambda: numpy_encode(chosen, batch),
        "FAISS SQ4": lambda: sq4.sa_encode(batch),
    }
    same = (numpy_encode(chosen, batch) == chosen.encode(batch)).mean()
    out: dict[str, Any] = {"numpy_and_faiss_codes_equal": float(same)}
    team = faiss.omp_get_max_threads()
    for threads in (team, 1):
        faiss.omp_set_num_threads(threads)
        for name, way in ways.items():
            way()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                way()
                time.sleep(gap)
            wall = time.perf_counter() - wall - rounds * gap
            cpu = time.process_time() - cpu
            per = {"wall_us": wall / rounds / len(batch) * 1e6}
            per["cpu_us"] = cpu / rounds / len(batch) * 1e6
            out[f"{name}, FAISS threads {threads}"] = per
            progress(f"{name}, FAISS threads {threads}: {per}")
    faiss.omp_set_num_threads(team)
    return out


def pool_sizes(
    seg: Segments, fine: F.Fine, queries: np.ndarray, want: list[set[int]], args: Any
) -> list[dict[str, Any]]:
    """Scan ms (one thread), ranking ms, the pool's recall@10 and its best 4 x k's, for each
    nprobe and pool size."""
    import faiss

    faiss.omp_set_num_threads(1)
    for q in queries[:20]:  # the first searches read the base's and the fine codes' pages
        fine.rank(q[None], seg.search(q[None], K * F.POOL, None, args.nprobe[0])[1], 4 * K)
    out = []
    for nprobe in args.nprobe:
        for pool in args.pool:
            start = time.perf_counter()
            found = [seg.search(q[None], pool, None, nprobe)[1] for q in queries]
            scanned = time.perf_counter()
            best = [
                fine.rank(q[None], ids, 4 * K)[0] for q, ids in zip(queries, found, strict=True)
            ]
            ranked = time.perf_counter()
            hits = sum(len(w & set(ids[0].tolist())) for w, ids in zip(want, found, strict=True))
            kept = sum(len(w & set(ids.tolist())) for w, ids in zip(want, best, strict=True))
            row = {
                "nprobe": nprobe,
                "pool": pool,
                "scan_ms": (scanned - start) / len(queries) * 1000,
            }
            row["rank_ms"] = (ranked - scanned) / len(queries) * 1000
            row["pool_recall"] = hits / (K * len(queries))
            row["best_4k_recall"] = kept / (K * len(queries))
            progress(f"{row}")
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--truth", type=int, default=200)
    parser.add_argument("--sample", type=int, default=200_000)
    parser.add_argument("--encode", action="store_true", help="time encoding instead")
    parser.add_argument("--pools", action="store_true", help="measure pool sizes instead")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[700, 850, 1000, 1141])
    parser.add_argument("--pool", type=int, nargs="+", default=[1000, 2000, 4000])
    args = parser.parse_args()
    if args.encode:
        conn = sqlite3.connect(f"file:{args.data / DB_FILE}?mode=ro", uri=True)
        out = {"cpu": cpu_model(), "n": args.n, "data": str(args.data), "load": os.getloadavg()}
        out["encode"] = encoding(sample_rows(conn, args.sample, MODELS[args.model][1]))
        record(out, "fine_ab")
        return
    queries = library_queries(args, 1000)[: args.truth]
    want = exact_truth_ids(args.data, queries)
    conn = sqlite3.connect(f"file:{args.data / DB_FILE}?mode=ro", uri=True)
    folder = B.saved(args.data / "index")[0]
    meta = json.loads((folder / B.META).read_text())
    base = B.load(folder, meta["model_id"], meta["dim"])
    seg = Segments(base, threading.Lock())
    dim = meta["dim"]
    if args.pools:
        assert base.fine is not None, "the base has no fine codes"
        out = {"cpu": cpu_model(), "n": args.n, "data": str(args.data), "base": folder.name}
        out["pools"] = pool_sizes(seg, base.fine, queries, want, args)
        record(out, "fine_ab")
        return
    progress(f"searching {folder.name} at nprobe {meta['nprobe']}")
    pools = []
    for q in queries:
        ids = seg.search(q[None], F.POOL * K, None, meta["nprobe"])[1][0]
        pools.append(ids[ids >= 0])
    progress("reading the pools' vectors")
    exact = rows(conn, sorted(set(np.concatenate(pools).tolist())), dim)
    progress(f"training on {args.sample:,} stored rows")
    sample = sample_rows(conn, args.sample, dim)
    kinds: list[tuple[str, Any]] = []
    own = base.fine
    if own is not None:
        kinds.append((f"the base's own, as saved ({own.quantizer.describe()})", own.quantizer))
    kinds += allotments(sample)
    out: dict[str, Any] = {"cpu": cpu_model(), "n": args.n, "data": str(args.data)}
    out.update(base=folder.name, nprobe=meta["nprobe"], pool=F.POOL * K, queries=len(queries))
    out["kinds"] = {}
    for name, quantizer in [*kinds, ("exact", None)]:
        hits = dict.fromkeys(DEPTHS, 0)
        spent = 0.0
        for q, pool, found in zip(queries, pools, want, strict=True):
            vectors = np.stack([exact[int(i)] for i in pool])
            if quantizer is None:
                scores = vectors @ q
            else:
                saved = own is not None and quantizer is own.quantizer
                codes = own.table.get(pool) if saved else quantizer.encode(vectors)
                start = time.perf_counter()
                scores = quantizer.scores(codes, q)
                spent += time.perf_counter() - start
            order = pool[np.argsort(-scores)]
            for depth in DEPTHS:
                hits[depth] += len(found & set(order[: depth * K].tolist()))
        recall = {d: hits[d] / (K * len(queries)) for d in DEPTHS}
        out["kinds"][name] = {"recall_at_depth": recall, "rank_ms": spent / len(queries) * 1000}
        shown = " ".join(f"{d}x {r:.4f}" for d, r in recall.items())
        progress(f"{name}: {shown}; {spent / len(queries) * 1000:.3f} ms a pool")
    record(out, "fine_ab")


if __name__ == "__main__":
    main()
