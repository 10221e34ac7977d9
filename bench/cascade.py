"""Narrow fast-scan codes on the residuals' principal directions, measured on a kept library:
would a scan of 4x fewer code bytes, then the fine codes over a deeper pool, find the true
top 10 as the base's own codes do?

    python bench/cascade.py --data DATA_DIR --n 10000000 --dist spectral --truth 200

DATA_DIR is a library bench/scale.py --keep left (an IVF base with fine codes). The base's
lists stay as they are: every stored row keeps its list, and its residual from the list's
centre is projected on the first `m` principal directions of residuals (fitted on --sample
stored rows) and coded by FAISS's fast-scan PQ (M sub-quantizers of 4 bits), each variant an
`IndexIVFPQFastScan` of m dimensions whose lists hold those codes. A query is compared with
the centres in 512-d as the daemon does; the narrow index scans the same lists
(`search_preassigned` with the 512-d centre scores as each list's bias: q . x = q . c + q . r),
its pool is ranked by the base's fine codes, and the script reports, for each --nprobe and
--pool, the scan's ms on one thread, the pool's recall@10 and that of its best 4 x k, beside
the base's own codes (pool 1,000).

Appends one JSON line to bench/out/cascade.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from scale import library_args, library_queries  # noqa: E402
from search_profile import exact_truth_ids  # noqa: E402

from imgsearch.catalog import DB_FILE  # noqa: E402
from imgsearch.index import base as B  # noqa: E402
from imgsearch.index.segments import centres, preassigned  # noqa: E402
from imgsearch.store.images import vector_chunks  # noqa: E402

K = 10


def list_of_ids(ivf: Any) -> np.ndarray:
    """Each stored id's list (-1: none), from the base's inverted lists."""
    import faiss

    inv = ivf.invlists
    sizes = [inv.list_size(i) for i in range(ivf.nlist)]
    parts = []
    for i, size in enumerate(sizes):
        if size:
            parts.append(np.array(faiss.rev_swig_ptr(inv.get_ids(i), size), np.int64))
    top = max(int(p.max()) for p in parts)
    out = np.full(top + 1, -1, np.int32)
    it = iter(parts)
    for i, size in enumerate(sizes):
        if size:
            out[next(it)] = i
    return out


def narrow(centre: np.ndarray, rotation: np.ndarray, m_sub: int, residuals: np.ndarray) -> Any:
    """An empty m-dim IndexIVFPQ (made fast-scan once filled: FAISS's constructor converts
    one): centres projected, PQ trained on the projected residuals."""
    import faiss

    m = rotation.shape[0]
    quantizer = faiss.IndexFlatIP(m)
    quantizer.add(np.ascontiguousarray(centre @ rotation.T, np.float32))
    index = faiss.IndexIVFPQ(quantizer, m, len(centre), m_sub, 4, faiss.METRIC_INNER_PRODUCT)
    x = np.ascontiguousarray(residuals @ rotation.T, np.float32)
    index.train_encoder(len(x), faiss.swig_ptr(x), None)
    index.is_trained = True
    return index


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--truth", type=int, default=200)
    parser.add_argument("--sample", type=int, default=200_000)
    parser.add_argument("--variants", nargs="+", default=["64:64", "128:64", "128:128", "256:128"])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[600, 850, 1141, 1392])
    parser.add_argument("--pool", type=int, nargs="+", default=[1000, 2000, 4000])
    args = parser.parse_args()
    queries = library_queries(args, 1000)[: args.truth]
    want = exact_truth_ids(args.data, queries)
    folder = B.saved(args.data / "index")[0]
    meta = json.loads((folder / B.META).read_text())
    base = B.load(folder, meta["model_id"], meta["dim"], mmap=False)
    assert base.fine is not None
    ivf = faiss.extract_index_ivf(base.index)
    centre = np.asarray(centres(base.index))
    progress("lists of stored ids")
    list_of = list_of_ids(ivf)
    conn = sqlite3.connect(f"file:{args.data / DB_FILE}?mode=ro", uri=True)
    top = conn.execute("SELECT max(id) FROM images").fetchone()[0]
    cursor = conn.execute(
        "SELECT id, vector FROM images WHERE id > ? AND missing=0 LIMIT ?", (top // 3, args.sample)
    )
    chunks = list(vector_chunks(cursor, 50_000, meta["dim"]))
    ids = np.concatenate([c.ids for c in chunks])
    x = np.concatenate([c.vectors for c in chunks])
    keep = (ids < len(list_of)) & (list_of[np.minimum(ids, len(list_of) - 1)] >= 0)
    resid = x[keep] - centre[list_of[ids[keep]]]
    progress(f"principal directions of {len(resid):,} residuals")
    cov = (resid.T @ resid) / len(resid)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    share = np.cumsum(values) / values.sum()
    variants = {}
    for v in args.variants:
        m, sub = map(int, v.split(":"))
        rotation = np.ascontiguousarray(vectors[:, :m].T, np.float32)
        variants[v] = (rotation, narrow(centre, rotation, sub, resid))
        progress(f"{v}: {share[m - 1]:.3f} of residual variance kept")
    progress("encoding every stored row")
    cursor = conn.execute("SELECT id, vector FROM images WHERE missing=0")
    done = 0
    for chunk in vector_chunks(cursor, 50_000, meta["dim"]):
        ok = chunk.ids < len(list_of)
        cid = chunk.ids[ok]
        assign = list_of[cid].astype(np.int64)
        has = assign >= 0
        cid, assign, xs = cid[has], assign[has], chunk.vectors[ok][has]
        for rotation, index in variants.values():
            xp = np.ascontiguousarray(xs @ rotation.T, np.float32)
            index.add_core(
                len(xp), faiss.swig_ptr(xp), faiss.swig_ptr(np.ascontiguousarray(cid)),
                faiss.swig_ptr(np.ascontiguousarray(assign)),
            )  # fmt: skip
        done += len(cid)
        if done % 1_000_000 < 50_000:
            progress(f"{done:,} rows encoded")
    for name, (rotation, index) in variants.items():
        variants[name] = (rotation, faiss.IndexIVFPQFastScan(index))
    faiss.omp_set_num_threads(1)
    fine = base.fine
    top_probe = max(args.nprobe)
    sims, lists = faiss.knn(queries, centre, top_probe, faiss.METRIC_INNER_PRODUCT)
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg(), "data": str(args.data)}
    out.update(base=folder.name, queries=len(queries), variants={}, share=share.tolist()[:512:32])

    def scan(index: Any, qs: np.ndarray, i: int, nprobe: int, pool: int) -> np.ndarray:
        near, score = lists[i : i + 1, :nprobe], sims[i : i + 1, :nprobe]
        return preassigned(index, qs[i : i + 1], pool, near, score, None)[1]

    def measure(index: Any, qs: np.ndarray, nprobe: int, pool: int) -> dict[str, Any]:
        for i in range(5):  # the first searches read the lists' pages
            scan(index, qs, i, nprobe, pool)
        found, spent = [], 0.0
        for i in range(len(qs)):
            start = time.perf_counter()
            found.append(scan(index, qs, i, nprobe, pool))
            spent += time.perf_counter() - start
        start = time.perf_counter()
        best = [fine.rank(queries[i][None], f, 4 * K)[0] for i, f in enumerate(found)]
        ranked = time.perf_counter() - start
        hits = sum(len(w & set(f[0].tolist())) for w, f in zip(want, found, strict=True))
        kept = sum(len(w & set(b.tolist())) for w, b in zip(want, best, strict=True))
        row = {"nprobe": nprobe, "pool": pool, "scan_ms": spent / len(qs) * 1000}
        row.update(rank_ms=ranked / len(qs) * 1000, pool_recall=hits / (K * len(qs)))
        row["best_4k_recall"] = kept / (K * len(qs))
        return row

    rows = []
    for nprobe in args.nprobe:
        row = measure(ivf, queries, nprobe, 1000)
        progress(f"base PQ256: {row}")
        rows.append(row)
    out["variants"]["base"] = rows
    for name, (rotation, index) in variants.items():
        qs = np.ascontiguousarray(queries @ rotation.T, np.float32)
        rows = []
        for nprobe in args.nprobe:
            for pool in args.pool:
                row = measure(index, qs, nprobe, pool)
                progress(f"{name}: {row}")
                rows.append(row)
        out["variants"][name] = rows
    record(out, "cascade")


if __name__ == "__main__":
    main()
