"""Scale: N synthetic vectors in a real daemon; start-up, memory, latency, recall, removes, disk.

    python bench/scale.py --n 100000                       # 512-d (ViT-B-32, random weights)
    python bench/scale.py --n 1000000 --dist uniform       # the worst case: no structure
    python bench/scale.py --n 1000000 --dist spectral      # real embeddings' spectrum
    python bench/scale.py --n 1000000 --model efficientnet-lite0   # 1280-d
    python bench/scale.py --n 10000000 --dist spectral --keep /work/big/K   # keep the data dir

One daemon is started on an empty data dir. 20 real photos are added (image search on them
gives the embedding time), then N vectors are written as float16 Parquet shards (generated in
chunks, never all in memory; paths in folders of 10,000) and loaded with POST /import, timed,
while /stats and /health are polled. "clustered" vectors imitate real embeddings: many
clusters of varied spread and 1% near-duplicates; queries are new vectors near stored ones
(a new photo of a known subject). "spectral" vectors are drawn the same way with every
variation spread over directions as real embeddings spread theirs (bench/spectrum.py: variance
of the k-th direction ~ k ** -1.2, where "clustered" spreads it evenly over all 512).
"uniform" vectors are random directions, queries too.
Ground truth is exact search over the vectors as stored (float16), streamed chunk by chunk.
After the import the index is left to train; the daemon is then restarted on the saved base
(start-up time and RSS), searched by vector and by image, photos removed and added back one
at a time and the searches by vector made again (the photos then in the recent segment), and
folders removed while searches run. Prints one JSON object and appends it to bench/out/scale.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402
    OUT_DIR,
    Daemon,
    LatencyPoller,
    cpu_model,
    generate_jpegs,
    percentiles,
    progress,
    record,
)

CHUNK = 10_000  # vectors generated at a time, and paths per folder
SHARD_CHUNKS = 10  # chunks per Parquet shard (100k rows)
PHOTOS = 20
ROOT = Path("/imgsearch-scale")  # the generated paths' folder (no files: imported vectors only)
CLUSTERS_PER_MILLION = 20_000
# "spectral" vectors' variance along their k-th direction, as k ** -SPECTRUM_POWER: the power
# law fitted to the spectrum of real embeddings (1.19 over their first 500 directions).
SPECTRUM_POWER = 1.2
DISTRIBUTIONS = ("clustered", "spectral", "uniform")
K = 10
MODELS = {"ViT-B-32": ("open_clip/ViT-B-32/random", 512), "efficientnet-lite0": (
    "efficientnet-lite0/imagenet", 1280)}  # fmt: skip


def library_args(parser: argparse.ArgumentParser) -> None:
    """The options of a script run on a library this script left (`--keep`): its data dir, and
    what makes its queries (N, the model's dimension, the distribution)."""
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="the library's size (its queries)")
    parser.add_argument("--model", choices=tuple(MODELS), default="ViT-B-32")
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")


def library_queries(args: argparse.Namespace, count: int) -> np.ndarray:
    """The new-photo queries of the library `library_args` named."""
    return Vectors(args.n, MODELS[args.model][1], args.dist).queries(count)


def daemon_flags(model: str) -> list[str]:
    """A daemon of `model` (a MODELS key) for imported vectors: one embedding worker, and
    ViT-B-32 with random weights (the model only names the vectors)."""
    flags = ["--model", model, "--workers", "1"]
    return flags if model == "efficientnet-lite0" else [*flags, "--pretrained", "none"]


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load": os.getloadavg(),
        "py": platform.python_version(),
    }


class Vectors:
    """Deterministic synthetic vectors, generated chunk by chunk (chunk i has seed i)."""

    def __init__(self, n: int, dim: int, dist: str) -> None:
        self.n, self.dim, self.dist = n, dim, dist
        rng = np.random.default_rng(12345)
        clusters = max(10, n * CLUSTERS_PER_MILLION // 1_000_000)
        # Like image embeddings: all in one cone (a shared mean direction: random pairs at
        # cosine ~0.4), clusters around it, members at varied spread (cosine ~0.5-0.85 to
        # their cluster's other members), and 1% near-duplicates.
        self.mean = rng.standard_normal(dim).astype(np.float32)
        self.centres = 0.8 * rng.standard_normal((clusters, dim)).astype(np.float32)
        self.spread = rng.uniform(0.5, 1.2, clusters).astype(np.float32)
        # "spectral": the same draws with every variation (centres, members, near-duplicates,
        # queries) spread over directions as in real embeddings: variances falling as a power
        # of the direction's rank (bench/spectrum.py), in a random basis, with the same total
        # variance as the isotropic draws (so the same norms and typical cosines).
        self.shape: np.ndarray | None = None
        if dist == "spectral":
            scale = np.arange(1, dim + 1, dtype=np.float64) ** (-SPECTRUM_POWER / 2)
            scale *= np.sqrt(dim / (scale**2).sum())
            basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
            self.shape = (scale[:, None] * basis.T).astype(np.float32)
            self.centres = self.shaped(self.centres)

    def shaped(self, noise: np.ndarray) -> np.ndarray:
        """Isotropic standard-normal `noise` given the distribution's spectrum (as is if none)."""
        return noise if self.shape is None else noise @ self.shape

    def chunk(self, i: int) -> np.ndarray:
        noise, which = self._draw(i)
        if self.dist == "uniform":
            return unit(noise)
        noise = self.shaped(noise)
        x = self.mean + self.centres[which] + self.spread[which, None] * noise
        x[1::100] = x[::100][: len(x[1::100])] + 0.05 * noise[1::100]  # near-duplicates
        return unit(x)

    def labels(self) -> np.ndarray:
        """The cluster each clustered vector was drawn from (a near-duplicate: its source's)."""
        out = []
        for i in range((self.n + CHUNK - 1) // CHUNK):
            which = self._draw(i)[1]
            which[1::100] = which[::100][: len(which[1::100])]
            out.append(which)
        return np.concatenate(out)

    def _draw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk i's noise and (clustered) each row's cluster, in one seeded order."""
        size = min(CHUNK, self.n - i * CHUNK)
        rng = np.random.default_rng(1000 + i)
        noise = rng.standard_normal((size, self.dim)).astype(np.float32)
        if self.dist == "uniform":
            return noise, np.zeros(0, np.int64)
        return noise, rng.integers(0, len(self.centres), size)

    def chunks(self) -> Iterator[np.ndarray]:
        for i in range((self.n + CHUNK - 1) // CHUNK):
            yield self.chunk(i)

    def queries(self, count: int) -> np.ndarray:
        return self.queries_and_sources(count)[0]

    def queries_and_sources(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` queries and (clustered) the stored vector each was made from."""
        rng = np.random.default_rng(777)
        if self.dist == "uniform":
            noise = rng.standard_normal((count, self.dim)).astype(np.float32)
            return unit(noise), np.zeros(0, np.int64)
        # A new photo of a known subject: a stored vector moved to cosine ~0.9 from it.
        sources = rng.integers(0, min(CHUNK, self.n), count)
        base = self.chunk(0)[sources]
        noise = self.shaped(rng.standard_normal(base.shape).astype(np.float32)) / np.sqrt(self.dim)
        return unit(base + 0.5 * noise), sources


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_shards(vectors: Vectors, model_id: str) -> tuple[Path, float]:
    """Every vector as float16 Parquet shards (SHARD_CHUNKS chunks a shard; paths in folders of
    CHUNK under ROOT), cached in bench/out/ by model, distribution and size: (folder, seconds
    spent writing; 0 when cached)."""
    import pyarrow as pa

    from imgsearch.bulk.format import schema, write_shard

    name = f"scale-shards-{model_id.replace('/', '_')}-{vectors.dist}-{vectors.n}"
    shards, root = OUT_DIR / name, ROOT
    if (shards / ".complete").exists():
        progress(f"using the shards cached in {shards}")
        return shards, 0.0
    start = time.perf_counter()
    shards.mkdir(parents=True, exist_ok=True)
    sch = schema(model_id, vectors.dim, float16=True)
    batch: list[pa.RecordBatch] = []
    chunks = (vectors.n + CHUNK - 1) // CHUNK
    for i, chunk in enumerate(vectors.chunks()):
        paths = [f"{root}/f{i:04d}/{j:05d}.jpg" for j in range(len(chunk))]
        flat = pa.array(chunk.astype(np.float16).reshape(-1), pa.float16())
        columns = {
            "path": pa.array(paths, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.dim),
            "size": pa.array([1000] * len(chunk), pa.int64()),
            "mtime_ns": pa.array([1] * len(chunk), pa.int64()),
            "width": pa.array([64] * len(chunk), pa.int32()),
            "height": pa.array([64] * len(chunk), pa.int32()),
        }
        full = {f.name: columns.get(f.name, pa.nulls(len(chunk), f.type)) for f in sch}
        batch.append(pa.RecordBatch.from_pydict(full, schema=sch))
        if len(batch) == SHARD_CHUNKS or i == chunks - 1:
            name = f"part-{i // SHARD_CHUNKS:05d}.parquet"
            write_shard(shards / name, pa.Table.from_batches(batch))
            batch = []
            progress(f"wrote {(i + 1) * CHUNK:,} vectors")
    (shards / ".complete").write_text("ok\n")
    return shards, time.perf_counter() - start


def photos_added(daemon: Daemon, count: int) -> list[str]:
    """Add `count` real photos (1024x768 JPEGs made from scikit-image's); return their paths."""
    folder = generate_jpegs(count, size=(1024, 768), quality=90, seed=7)
    daemon.get("/add?image=" + urllib.request.quote(str(folder)))
    return sorted(str(p) for p in folder.glob("*.jpg"))


def image_searches(daemon: Daemon, photos: list[str], rounds: int = 3) -> dict[str, float]:
    """Search by each photo's path (decoded and embedded each time): latency percentiles."""
    times = []
    for _ in range(rounds):
        for p in photos:
            times.append(timed_get(daemon, "/search?limit=10&image=" + urllib.request.quote(p)))
    return percentiles(times)


def truth(vectors: Vectors, queries: np.ndarray) -> np.ndarray:
    """Exact top-K ids (1-based store ids, in load order) over the vectors as stored (float16)."""
    import faiss

    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for i, chunk in enumerate(vectors.chunks()):
        stored = unit(chunk.astype(np.float16).astype(np.float32))
        sims, idx = faiss.knn(queries, stored, K, metric=faiss.METRIC_INNER_PRODUCT)
        s = np.concatenate([best_s, sims], axis=1)
        ids = np.concatenate([best_i, idx + i * CHUNK + 1], axis=1)
        order = np.argsort(-s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(ids, order, 1)
    return best_i


def post_json(url: str, body: dict[str, Any], timeout: float = 60.0) -> tuple[Any, float]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = json.load(resp)
    return data, (time.perf_counter() - start) * 1000


def rss(pid: int) -> dict[str, float]:
    """Resident MB now and at most, and now of anonymous memory (the heap, the index's codes)
    and of mapped files (the fine codes, libraries)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kb = {
        line.split(":")[0]: int(line.split()[1])
        for line in status
        if line.startswith(("Vm", "Rss"))
    }
    return {
        "rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024,
        "anon_mb": kb.get("RssAnon", 0) / 1024, "file_mb": kb.get("RssFile", 0) / 1024,
    }  # fmt: skip


def wait_idle(daemon: Daemon, timeout: float = 7200, quiet: float = 12.0) -> dict[str, Any]:
    """Wait until the index has neither trained nor compacted for `quiet` seconds (the worker
    looks for work every few seconds); return its /stats description."""
    deadline = time.monotonic() + timeout
    idle_since = None
    while time.monotonic() < deadline:
        index = daemon.get("/stats")["index"]
        if index["state"] != "idle":
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= quiet:
            return dict(index)
        time.sleep(0.5)
    raise TimeoutError("index never settled")


def searches(daemon: Daemon, queries: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    times, hits = [], 0
    for q, w in zip(queries, want, strict=True):
        body, ms = post_json(daemon.url + "/search", {"vector": q.tolist(), "limit": K})
        times.append(ms)
        got = {path_to_id(r["image"]) for r in body["results"]}
        hits += len(got & set(w.tolist()))
    return {"search_ms": percentiles(times), "recall_at_10": hits / want.size}


def path_to_id(path: str) -> int:
    """A generated vector's number from 1 in generation order (its path says it); 0 for the
    real photos, which the ground truth does not hold."""
    folder, name = Path(path).parent.name, Path(path).stem
    if not (folder.startswith("f") and folder[1:].isdigit() and name.isdigit()):
        return 0
    return int(folder[1:]) * CHUNK + int(name) + 1


def timed_get(daemon: Daemon, path: str) -> float:
    start = time.perf_counter()
    daemon.get(path)
    return (time.perf_counter() - start) * 1000


class Searching:
    """Searches by vector back to back in a thread; records each latency (ms)."""

    def __init__(self, daemon: Daemon, queries: np.ndarray) -> None:
        self.daemon, self.queries = daemon, queries
        self.times: list[float] = []
        self.started: list[float] = []  # wall-clock start of each, to find it in the daemon log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            q = self.queries[len(self.times) % len(self.queries)]
            self.started.append(time.time())
            self.times.append(post_json(self.daemon.url + "/search", {"vector": q.tolist()})[1])

    def __enter__(self) -> Searching:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def remove_under_load(daemon: Daemon, root: Path, n: int, queries: np.ndarray) -> dict[str, Any]:
    """Remove one image, then 10% of the library folder by folder, which makes the daemon
    compact (write a new base and swap it in), all while searching by vector."""
    out: dict[str, Any] = {}
    folders = [f"{root}/f{i:04d}" for i in range(1, max(2, n // CHUNK // 10 + 1))]
    with Searching(daemon, queries) as load:
        removes = [timed_get(daemon, "/remove?image=" + urllib.request.quote(f)) for f in folders]
        out["remove_folder_ms"] = percentiles(removes)
        start = time.perf_counter()
        time.sleep(2)  # the worker looks for work every few seconds
        out["index_after_compaction"] = wait_idle(daemon)
        out["compaction_s"] = time.perf_counter() - start
    out["search_ms_during_removes_and_compaction"] = percentiles(load.times)
    slowest = int(np.argmax(load.times))
    out["slowest_search_started"] = (
        time.strftime("%H:%M:%S", time.localtime(load.started[slowest]))
        + f".{int(load.started[slowest] % 1 * 1000):03d}"
    )
    return out


def kept_log(daemon: Daemon, phase: str, args: argparse.Namespace) -> list[str]:
    """Copy the daemon's log to bench/out (the data dir is temporary): scale-N-PHASE.log, with
    the distribution and model in the name unless clustered ViT-B-32; return its warnings
    (slow searches say where their time went)."""
    text = daemon.log_path.read_text(errors="replace")
    variant = (
        "" if (args.dist, args.model) == ("clustered", "ViT-B-32") else f"-{args.dist}-{args.model}"
    )
    target = Path(__file__).parent / "out" / f"scale-{args.n}{variant}-{phase}.log"
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line][:50]


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    """A temporary folder for the data dir, or `--keep` (created, left in place)."""
    if args.keep:
        args.keep.mkdir(parents=True)
        yield args.keep
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One daemon from empty: photos, then N vectors through POST /import, then every measure."""
    _, dim = MODELS[args.model]
    vectors = Vectors(args.n, dim, args.dist)
    flags = daemon_flags(args.model)
    out: dict[str, Any] = {"n": args.n, "dim": dim, "dist": args.dist, **machine()}
    env = {"IMGSEARCH_INDEX_CENTRED": "1"} if args.centred_lists else {}
    out["lists"] = "centred" if args.centred_lists else "plain"
    with workdir(args) as tmp:
        data_dir, root = tmp / "data", ROOT
        daemon = Daemon(flags, data_dir, start_timeout=7200, env=env)
        with daemon:
            out["model"] = model_id = daemon.get("/stats")["model"]
            if model_id != MODELS[args.model][0]:
                raise SystemExit(f"the daemon's model is {model_id}, not {MODELS[args.model][0]}")
            photos = photos_added(daemon, PHOTOS)
            out["image_search_ms_at_20"] = image_searches(daemon, photos)
            shards, out["write_shards_s"] = write_shards(vectors, model_id)
            progress(f"importing {args.n:,} vectors")
            urls = {"stats": daemon.url + "/stats", "health": daemon.url + "/health"}
            with LatencyPoller(urls, interval=0.1) as poller:
                start, cpu = time.perf_counter(), daemon.cpu_seconds()
                job, _ = post_json(
                    daemon.url + "/import", {"dir": str(shards), "wait": True}, timeout=86400
                )
                elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu
                out["import"] = {
                    "state": job["state"], "imported": job["imported"], "seconds": elapsed,
                    "vectors_per_s": job["imported"] / elapsed,
                    "vectors_per_cpu_s": job["imported"] / cpu,
                }  # fmt: skip
                progress(f"imported: {out['import']}; waiting for the index to settle")
                start = time.perf_counter()
                out["index_built"] = wait_idle(daemon, timeout=86400)
                out["settle_after_import_s"] = time.perf_counter() - start
            out["during_import_and_training_ms"] = {
                name: percentiles(ms) for name, ms in poller.latencies.items()
            }
            out["first_daemon_rss"] = rss(daemon._proc.pid)  # type: ignore[union-attr]
        out["daemon_warnings_import"] = kept_log(daemon, "import", args)
        queries = vectors.queries(args.queries)
        progress("exact ground truth")
        want = truth(vectors, queries)
        start = time.perf_counter()
        with daemon:
            out["start_s"] = time.perf_counter() - start
            pid = daemon._proc.pid  # type: ignore[union-attr]
            out["start_rss"] = rss(pid)
            stats = daemon.get("/stats")
            out["index"] = stats["index"]
            # The precision self-check runs after /health; the first image search waits for it.
            out["checking_precision_at_health"] = stats["embedding"].get("precision_checking")
            first = timed_get(daemon, "/search?limit=10&image=" + urllib.request.quote(photos[0]))
            out["first_image_search_ms"] = first
            out["start_to_first_image_search_s"] = time.perf_counter() - start
            out.update(searches(daemon, queries, want))
            out["image_search_ms"] = image_searches(daemon, photos)
            out["image_search_over_20_ms"] = (
                out["image_search_ms"]["p50"] - out["image_search_ms_at_20"]["p50"]
            )
            out["stats_ms"] = percentiles([timed_get(daemon, "/stats") for _ in range(300)])
            out["steady_rss"] = rss(pid)
            out.update(add_remove_one(daemon, photos))
            # An add embeds the photo: what the library's size adds is the excess over embedding.
            embed_ms = out["image_search_ms_at_20"]["p50"]
            out["add_one_over_20_ms"] = out["add_one_ms"]["p50"] - embed_ms
            # The photos added back wait in the recent segment until a compaction: the searches
            # of a library that takes adds (the ones above ran with none).
            out["recent_at_searches_after_adds"] = daemon.get("/stats")["index"]["recent"]
            after = searches(daemon, queries, want)
            out["search_ms_after_adds"] = after["search_ms"]
            out["recall_at_10_after_adds"] = after["recall_at_10"]
            out.update(remove_under_load(daemon, root, args.n, queries))
            out["after_removes_rss"] = rss(pid)
            proc = daemon._proc
            assert proc is not None
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            out["exit_code"] = proc.wait(60)
            out["sigterm_to_exit_s"] = time.perf_counter() - start
        # Bytes allocated on disk (the fine codes' file is grown sparse, ahead of the ids).
        size = sum(f.stat().st_blocks * 512 for f in data_dir.rglob("*") if f.is_file())
        out["disk_bytes_per_image"] = size / args.n
        out["db_bytes_per_image"] = (data_dir / "imgsearch.sqlite3").stat().st_size / args.n
        out["log_tail"] = daemon.log_tail(12)
        out["daemon_warnings_serve"] = kept_log(daemon, "serve", args)
    return out


def add_remove_one(daemon: Daemon, photos: list[str]) -> dict[str, Any]:
    """Remove one photo and add it back, ten times: each request's latency (ms)."""
    removes, adds = [], []
    for p in photos[:10]:
        quoted = urllib.request.quote(p)
        removes.append(timed_get(daemon, "/remove?image=" + quoted))
        adds.append(timed_get(daemon, "/add?image=" + quoted))
    return {"remove_one_ms": percentiles(removes), "add_one_ms": percentiles(adds)}


def crossover(sizes: list[int], dim: int) -> list[dict[str, Any]]:
    """Per-query time of exact search and of IVF-Flat at the nprobe reaching recall@10 0.97,
    in process (no HTTP), one query at a time on one thread, as the daemon runs them."""
    import faiss

    faiss.omp_set_num_threads(1)
    from imgsearch.index.policy import lists_for

    rows = []
    for n in sizes:
        vectors = Vectors(n, dim, "clustered")
        x = np.concatenate(list(vectors.chunks()))
        queries = vectors.queries(100)
        flat = faiss.IndexFlatIP(dim)
        flat.add(x)
        _, want = flat.search(queries, K)
        lists = lists_for(n)
        ivf = faiss.index_factory(dim, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.train(x[np.random.default_rng(0).choice(n, min(n, lists * 40), replace=False)])
        ivf.add(x)
        nprobe, recall = 1, 0.0
        while nprobe <= lists:
            ivf.nprobe = nprobe
            got = ivf.search(queries, K)[1]
            recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(got, want, strict=True)])
            if recall >= 0.97:
                break
            nprobe *= 2
        row = {"n": n, "lists": lists, "nprobe": nprobe, "recall": recall}
        for name, index in (("exact_ms", flat), ("ivf_ms", ivf)):
            start = time.perf_counter()
            for q in queries:
                index.search(q[None, :], K)
            row[name] = (time.perf_counter() - start) * 1000 / len(queries)
        progress(json.dumps(row))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")
    parser.add_argument("--model", choices=tuple(MODELS), default="ViT-B-32")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--tmp", default=None, help="where the data dir goes (default: $TMPDIR)")
    parser.add_argument(
        "--keep", type=Path, help="leave the data dir in this new folder (for search_profile.py)"
    )
    parser.add_argument(
        "--shards-only", action="store_true", help="only write (and cache) the Parquet shards"
    )
    parser.add_argument(
        "--centred-lists", action="store_true",
        help="the IVF lists trained on the vectors less their mean (IMGSEARCH_INDEX_CENTRED=1)",
    )  # fmt: skip
    parser.add_argument(
        "--crossover", type=int, nargs="*", help="only time exact vs IVF at these sizes"
    )
    args = parser.parse_args()
    if args.shards_only:
        model_id, dim = MODELS[args.model]
        print(write_shards(Vectors(args.n, dim, args.dist), model_id))
        return
    if args.crossover:
        result: dict[str, Any] = {"crossover": crossover(args.crossover, 512), **machine()}
    else:
        result = run(args)
    record(result, "scale")


if __name__ == "__main__":
    main()
