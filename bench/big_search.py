"""Where a search by vector spends its time at 10M, in process (no daemon, no SQLite).

    python bench/big_search.py --phase build --dir /work/big/B   # once: ~15 min here
    python bench/big_search.py --phase time --dir /work/big/B    # the breakdown
    python bench/big_search.py --phase build --dir /work/big/E --earlier --vectors /work/big/B

`build` reads bench/scale.py's cached float16 shards of N clustered vectors (`--shards-only`
writes them) into DIR/vectors.f16 (a float16 memmap, id = row number), trains the policy's
index for N (`IVF16384,PQ256x4fs` at 10M; `IVF12649_HNSW32,PQ256x4fs` before 2026-12-03
21:00) on its sample size as the daemon trains it (index/kmeans.py), adds every vector and
saves DIR/index.faiss. `time` opens both and times, one query at a time on one thread, the
coarse quantizer (an HNSW one at several efSearch, and flat over the centroids), the scan of the
probed lists (`search_preassigned`), the scan split between two threads, and the re-scoring
(exact float16 rows from the memmap; the SQLite read is measured by bench/search_path.py);
recall@10 on bench/scale.py's new-photo queries against exact search over the stored vectors,
for each nprobe and re-scoring depth asked. Prints one JSON line (bench/out/big_search.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import OUT_DIR, percentiles, progress, record  # noqa: E402
from scale import K, Vectors, machine  # noqa: E402

from imgsearch.cpu import native_bf16  # noqa: E402
from imgsearch.index import kmeans, rotation  # noqa: E402
from imgsearch.index import policy as P  # noqa: E402
from imgsearch.index.base import for_adding  # noqa: E402
from imgsearch.index.hits import merge  # noqa: E402
from imgsearch.index.scans import preassigned  # noqa: E402

DIM = 512


def shards(n: int) -> Path:
    return OUT_DIR / f"scale-shards-open_clip_ViT-B-32_random-clustered-{n}"


def build(n: int, folder: Path, vectors: Path | None, earlier: bool) -> dict[str, Any]:
    """`earlier`: the index of the policy before 2026-12-03 21:00 (4 sqrt(n) lists, ten flat
    k-means iterations, an HNSW coarse quantizer from 8,192 lists walked by adds at
    HNSW_ADD_EF); `vectors`: another folder's vectors.f16 (the same N), linked, not re-read."""
    import faiss
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    start, row = time.perf_counter(), 0
    if vectors is not None:
        (folder / "vectors.f16").unlink(missing_ok=True)
        os.link(vectors / "vectors.f16", folder / "vectors.f16")
        store = np.load(folder / "vectors.f16", mmap_mode="r")
        row = len(store)
    else:
        store = np.lib.format.open_memmap(folder / "vectors.f16", "w+", np.float16, (n, DIM))
        for part in sorted(shards(n).glob("*.parquet")):
            column = pq.read_table(part, columns=["vector"]).column(0).combine_chunks()
            flat = column.values.to_numpy(zero_copy_only=False).reshape(-1, DIM)
            store[row : row + len(flat)] = flat
            row += len(flat)
        store.flush()
    assert row == n, row
    read_s = time.perf_counter() - start
    policy = P.Policy(hnsw_min_lists=8_192, lists_per_sqrt=4.0) if earlier else P.Policy()
    spec = policy.spec(n, DIM)  # (at most 16,384 lists: 12,649 at 10M either way)
    factory, rotated = rotation.factory_of(spec.factory)
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(P.SEED)
    sample = np.sort(rng.choice(n, P.train_size(spec.lists, n), replace=False))
    start = time.perf_counter()
    two_level = 1 << 62 if earlier else P.TWO_LEVEL_MIN_LISTS
    train = np.asarray(store[sample], np.float32)
    kmeans.train(index, train, native_bf16(), P.SEED, two_level, codes=not rotated)
    index = rotation.train(index, train) if rotated else index
    del train
    for_adding(index)
    train_s = time.perf_counter() - start
    progress(f"trained {spec.factory} on {len(sample):,} in {train_s:.0f}s")
    start = time.perf_counter()
    for first in range(0, n, 100_000):
        chunk = np.asarray(store[first : first + 100_000], np.float32)
        index.add_with_ids(chunk, np.arange(first, first + len(chunk), dtype=np.int64))
        if first % 1_000_000 == 0:
            progress(f"added {first:,}")
    add_s = time.perf_counter() - start
    faiss.write_index(index, str(folder / "index.faiss"))
    return {"factory": spec.factory, "read_s": read_s, "train_s": train_s, "add_s": add_s}


def timed(fn: Any, count: int) -> dict[str, Any]:
    """fn(i) for query i, one at a time: wall-clock ms percentiles."""
    fn(0)
    wall = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        wall.append((time.perf_counter() - start) * 1000)
    return percentiles(wall)


def recall(found: np.ndarray, want: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(found, want, strict=True))
    return hits / int((want >= 0).sum())


def exact_truth(store: np.ndarray, queries: np.ndarray, own: np.ndarray | None) -> np.ndarray:
    """Exact top K over every stored vector (`own`: each query's own id, left out)."""
    import faiss

    extra = 0 if own is None else 1
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for first in range(0, len(store), 500_000):
        chunk = np.asarray(store[first : first + 500_000], np.float32)
        sims, idx = faiss.knn(queries, chunk, K + extra, metric=faiss.METRIC_INNER_PRODUCT)
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, idx + first], axis=1)
        order = np.argsort(-s, axis=1)[:, : K + extra]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return best_i if own is None else without(best_i, own)


def without(ids: np.ndarray, own: np.ndarray) -> np.ndarray:
    return np.stack([row[row != me][:K] for row, me in zip(ids, own, strict=True)])


class Searcher:
    """One query's stages, done with FAISS's pieces as imgsearch/index/segments.py does."""

    def __init__(self, index: Any, store: np.ndarray) -> None:
        import faiss

        self.store = store
        self.index = index  # (queries rotated into a rotated index's space for the IVF)
        self.ivf = faiss.extract_index_ivf(index)
        self.quantizer = faiss.downcast_index(self.ivf.quantizer)
        self.graph = isinstance(self.quantizer, faiss.IndexHNSW)
        lists = self.ivf.invlists
        self.sizes = np.array([lists.list_size(i) for i in range(self.ivf.nlist)], np.int64)
        if self.graph:  # (a flat quantizer of the policy since 2026-12-03 21:00 is scanned as is)
            cents = self.quantizer.storage.reconstruct_n(0, self.ivf.nlist)
            self.flat = faiss.IndexFlatIP(DIM)
            self.flat.add(cents)
        else:
            self.flat = self.quantizer
        self.pool = ThreadPoolExecutor(1, initializer=faiss.omp_set_num_threads, initargs=(1,))

    def coarse(self, q: np.ndarray, nprobe: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """ef 0: a flat search over the centroids."""
        import faiss

        q = rotation.into_space(self.index, q)
        if not ef:
            return self.flat.search(q, nprobe)  # type: ignore[no-any-return]
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        return self.quantizer.search(q, nprobe, params=params)  # type: ignore[no-any-return]

    def scan(
        self, q: np.ndarray, k: int, assign: tuple[np.ndarray, np.ndarray], split: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        dist, lists = assign
        q = rotation.into_space(self.index, q)
        if not split:
            return preassigned(self.ivf, q, k, lists, dist, None)
        other = self.pool.submit(preassigned, self.ivf, q, k, lists[:, 1::2], dist[:, 1::2], None)
        return merge([preassigned(self.ivf, q, k, lists[:, ::2], dist[:, ::2], None),
                      other.result()], k)  # fmt: skip

    def rescore(self, q: np.ndarray, ids: np.ndarray, top: int = K) -> np.ndarray:
        row = np.unique(ids[ids >= 0])
        sims = np.asarray(self.store[row], np.float32) @ q[0]
        return row[np.argsort(-sims)[:top]]


def configs(s: Searcher, qs: list[np.ndarray], want: np.ndarray, args: Any) -> list[Any]:
    rows = []
    for nprobe in args.nprobe:
        for ef in (2 * nprobe, nprobe, 0) if s.graph else (0,):  # 2 and 1 a probe, flat
            row: dict[str, Any] = {"nprobe": nprobe, "ef": ef or "flat"}
            row["coarse"] = timed(lambda i, n=nprobe, e=ef: s.coarse(qs[i], n, e), len(qs))
            assigns = [s.coarse(q, nprobe, ef) for q in qs]
            row["codes"] = float(np.mean([s.sizes[a[1][0]].sum() for a in assigns]))
            for depth in args.rescore:
                k = K * depth
                found = [s.scan(q, k, a, False)[1] for q, a in zip(qs, assigns, strict=True)]
                top = np.stack([s.rescore(q, f) for q, f in zip(qs, found, strict=True)])
                row[f"recall_x{depth}"] = recall(top, want)
                if ef in (2 * nprobe, nprobe) or not s.graph:
                    for split in (False, True):
                        name = f"scan{'2' if split else ''}_x{depth}"
                        row[name] = timed(lambda i, k=k, a=assigns, sp=split:
                                          s.scan(qs[i], k, a[i], sp), len(qs))  # fmt: skip
                    row[f"rescore_x{depth}"] = timed(
                        lambda i, f=found: s.rescore(qs[i], f[i]), len(qs)
                    )
            progress(str(row))
            rows.append(row)
    return rows


def time_it(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    index = faiss.read_index(str(folder / "index.faiss"))
    store = np.load(folder / "vectors.f16", mmap_mode="r")
    out: dict[str, Any] = {"open_s": time.perf_counter() - start, "n": int(index.ntotal)}
    s = Searcher(index, store)
    out["nlist"] = int(s.ivf.nlist)
    out["imbalance"] = float(s.ivf.invlists.imbalance_factor())
    n = len(store)
    cached = folder / f"queries-{args.queries}.npz"
    if cached.exists():
        saved = np.load(cached)
        new, want, own, stored, stored_want = (saved[k] for k in ("q", "w", "o", "s", "sw"))
    else:
        faiss.omp_set_num_threads(2)
        new = Vectors(n, DIM, "clustered").queries(args.queries)
        want = exact_truth(store, new, None)
        own = np.sort(np.random.default_rng(P.SEED).choice(n, args.queries, replace=False))
        stored = np.asarray(store[own], np.float32)
        stored_want = exact_truth(store, stored, own)
        np.savez(cached, q=new, w=want, o=own, s=stored, sw=stored_want)
        faiss.omp_set_num_threads(1)
    use = args.use or len(new)  # the first USE of the (cached) queries
    new, want, own, stored, stored_want = (
        new[:use],
        want[:use],
        own[:use],
        stored[:use],
        stored_want[:use],
    )
    progress("ground truth ready")
    out["new_photo"] = configs(s, [new[i : i + 1] for i in range(len(new))], want, args)
    # The tuning's queries: stored vectors, each one's own id left out of the answers.
    for row, nprobe in ((r, r["nprobe"]) for r in out["new_photo"] if r["ef"] != "flat"):
        if row["ef"] == 2 * nprobe:
            assigns = [s.coarse(stored[i : i + 1], nprobe, 2 * nprobe) for i in range(len(own))]
            for depth in args.rescore:
                k = K * depth + 1
                found = [s.scan(stored[i : i + 1], k, a, False)[1] for i, a in enumerate(assigns)]
                top = np.stack(
                    [s.rescore(stored[i : i + 1], f, K + 1) for i, f in enumerate(found)]
                )
                row[f"stored_recall_x{depth}"] = recall(without_own(top, own), stored_want)
    return out


def without_own(top: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each query's best K other than itself, -1 padded."""
    out = np.full((len(top), K), -1, np.int64)
    for i, (row, me) in enumerate(zip(top, own, strict=True)):
        others = row[row != me][:K]
        out[i, : len(others)] = others
    return out


def store_reads(db: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The re-scoring read of 40 / 100 / 250 random ids of a library's SQLite file, with its
    pages in the page cache and without (dropped before each read, as at 10M, where the 15 GB
    file does not fit beside the daemon): one read (StoreSource.vectors) and the daemon's
    split read (index/reads.py: Searcher.vectors, READ_PARTS reads side by side), the two
    alternating query by query."""
    import os

    from imgsearch.catalog import StoreSource
    from imgsearch.index.reads import READ_PARTS, Searcher
    from imgsearch.store import Store

    store = Store(db)
    source = StoreSource(store)
    searcher = Searcher(source)
    ids = store.ids()
    rng = np.random.default_rng(5)
    out: dict[str, Any] = {"db": str(db), "rows": len(ids), "bytes": db.stat().st_size}
    out["read_parts"] = READ_PARTS
    fd = os.open(db, os.O_RDONLY)
    for count in (40, 100, 250):
        picks = [np.sort(rng.choice(ids, count, False)).tolist() for _ in range(args.queries)]
        kinds = ("warm", "cold", "split_warm", "split_cold")
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for i, pick in enumerate(picks):
            first, second = (source.vectors, searcher.vectors)[:: 1 if i % 2 else -1]
            for read in (first, second):
                name = "split_" if read == searcher.vectors else ""
                for state in ("cold", "warm") if i % 4 == 0 else ("warm",):
                    if state == "cold":
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    start = time.perf_counter()
                    read(pick)
                    times[name + state].append((time.perf_counter() - start) * 1000)
        for name, ms in times.items():
            out[f"{name}_{count}"] = percentiles(ms)
        progress(json.dumps({k: out[k] for k in out if k.endswith(f"_{count}")}))
    os.close(fd)
    searcher.close()
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["build", "time", "store"], required=True)
    parser.add_argument("--dir", type=Path, required=True, help="store: a SQLite file")
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--use", type=int, default=0, help="time: only the first USE queries")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[128, 256, 384, 512, 768, 1051])
    parser.add_argument("--rescore", type=int, nargs="+", default=[4, 10, 25])
    parser.add_argument("--earlier", action="store_true", help="build: the earlier policy's")
    parser.add_argument("--vectors", type=Path, help="build: a folder whose vectors.f16 to use")
    args = parser.parse_args()
    import faiss

    if args.phase == "build":
        faiss.omp_set_num_threads(2)
        result = build(args.n, args.dir, args.vectors, args.earlier)
    elif args.phase == "store":
        result = store_reads(args.dir, args)
    else:
        result = time_it(args.dir, args)
    record({"bench": "big_search", "phase": args.phase, **machine(), **result}, "big_search")


if __name__ == "__main__":
    main()
