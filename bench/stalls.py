"""Stalls: search and /stats latency while the index trains, compacts or takes an import.

    python bench/stalls.py --lib /work/big/A/lib-1000000 --phase train
    python bench/stalls.py --lib /work/big/A/lib-1000000 --phase remove
    python bench/stalls.py --lib /work/big/A/lib-1000000 --phase import --extra 200000

A focused companion of bench/scale.py: the library (N clustered vectors imported from
bench/scale.py's cached shards, trained, settled) is built once under --lib and copied for each
run, so a run measures one event at the library's full size in minutes:

- `train`: the saved base's meta.json is made to say it was trained on 1 vector, so the daemon
  retrains right after it starts (k-means, every vector re-added, tuning);
- `remove`: 10% of the library is removed folder by folder, which makes the daemon compact;
- `import`: --extra new vectors (same clusters, new folders) are imported with compaction held
  off (`IMGSEARCH_INDEX_DELTA_MAX`), searched with that recent segment (p50/p99, recall@10),
  then the daemon is restarted with the default thresholds and compacts them in. (Keep the
  recent segment under twice the import hold's limit, 400,000 exact vectors before this
  change, or the import waits for a compaction that the raised threshold never allows.)

Searches by vector run back to back in one client thread throughout, /stats is polled every
100 ms; both are reported for the window in which the index said it was not idle (and the
import itself), with the count over 500 ms (issue #11: no search over 500 ms while anything is
persisted). Prints one JSON object and appends it to bench/out/stalls.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import OUT_DIR, Daemon, get_json, percentiles, progress, record  # noqa: E402
from scale import (  # noqa: E402
    CHUNK,
    MODELS,
    ROOT,
    K,
    Vectors,
    machine,
    path_to_id,
    post_json,
    rss,
    truth,
    wait_idle,
    write_shards,
)

FLAGS = ["--model", "ViT-B-32", "--pretrained", "none", "--workers", "1"]
NO_COMPACTION = {"IMGSEARCH_INDEX_DELTA_MAX": str(1 << 40)}
SLOW_MS = 500.0


class Timeline:
    """Back-to-back searches by vector and /stats polls, each stamped: (t, ms, extra)."""

    def __init__(self, daemon: Daemon, queries: np.ndarray) -> None:
        self.daemon, self.queries = daemon, queries
        self.searches: list[tuple[float, float]] = []
        self.stats: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._search, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]

    def _search(self) -> None:
        while not self._stop.is_set():
            q = self.queries[len(self.searches) % len(self.queries)]
            t = time.perf_counter()
            _, ms = post_json(self.daemon.url + "/search", {"vector": q.tolist(), "limit": K})
            self.searches.append((t, ms))

    def _poll(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            state = get_json(self.daemon.url + "/stats", 60)["index"]["state"]
            self.stats.append((t, (time.perf_counter() - t) * 1000, state))
            self._stop.wait(max(0.0, 0.1 - (time.perf_counter() - t)))

    def __enter__(self) -> Timeline:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def busy(self) -> tuple[float, float] | None:
        """First and last moment /stats said the index was not idle."""
        busy = [t for t, _, state in self.stats if state != "idle"]
        return (busy[0], busy[-1]) if busy else None

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Latencies of the searches and /stats calls started within [start, end]."""
        s = [ms for t, ms in self.searches if start <= t <= end]
        st = [ms for t, ms, _ in self.stats if start <= t <= end]
        return {
            "seconds": end - start,
            "search_ms": {**percentiles(s), "over_500": sum(ms > SLOW_MS for ms in s)},
            "stats_ms": {**percentiles(st), "over_500": sum(ms > SLOW_MS for ms in st)},
        }


def prepare(lib: Path, vectors: Vectors) -> dict[str, Any]:
    """The library once: N vectors imported into a fresh daemon, trained and settled."""
    if (lib / ".complete").exists():
        return json.loads((lib / ".complete").read_text())
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    shards, _ = write_shards(vectors, MODELS["ViT-B-32"][0])
    with Daemon(FLAGS, lib / "data", start_timeout=600) as daemon:
        progress(f"building the library in {lib}: importing {vectors.n:,} vectors")
        start = time.perf_counter()
        post_json(daemon.url + "/import", {"dir": str(shards), "wait": True}, timeout=86400)
        imported = time.perf_counter() - start
        index = wait_idle(daemon, timeout=86400)
        info = {"import_s": imported, "settled_s": time.perf_counter() - start, "index": index}
    (lib / ".complete").write_text(json.dumps(info))
    return info


def extra_shards(vectors: Vectors, n: int, count: int) -> Path:
    """`count` new vectors (chunks after the library's first `n`, same clusters) as float16
    shards."""
    import pyarrow as pa

    from imgsearch.bulk.format import schema, write_shard

    folder = OUT_DIR / f"stalls-extra-{vectors.dist}-{n}-{count}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sch = schema(MODELS["ViT-B-32"][0], vectors.dim, float16=True)
    first = n // CHUNK
    for i in range(first, first + count // CHUNK):
        chunk = vectors.chunk(i)
        flat = pa.array(chunk.astype(np.float16).reshape(-1), pa.float16())
        columns = {
            "path": pa.array([f"{ROOT}/f{i:04d}/{j:05d}.jpg" for j in range(len(chunk))]),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.dim),
            "size": pa.array([1000] * len(chunk), pa.int64()),
            "mtime_ns": pa.array([1] * len(chunk), pa.int64()),
        }
        full = {f.name: columns.get(f.name, pa.nulls(len(chunk), f.type)) for f in sch}
        write_shard(folder / f"part-{i:05d}.parquet", pa.Table.from_pydict(full, schema=sch))
    (folder / ".complete").write_text("ok\n")
    return folder


def recall(daemon: Daemon, queries: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    times, hits = [], 0
    for q, w in zip(queries, want, strict=True):
        body, ms = post_json(daemon.url + "/search", {"vector": q.tolist(), "limit": K})
        times.append(ms)
        hits += len({path_to_id(r["image"]) for r in body["results"]} & set(w.tolist()))
    return {"search_ms": percentiles(times), "recall_at_10": hits / want.size}


def settle(daemon: Daemon, line: Timeline, out: dict[str, Any], name: str) -> None:
    time.sleep(6)  # the worker looks for work every 5 s
    out[name + "_index"] = wait_idle(daemon, timeout=7200)
    span = line.busy()
    out[name] = line.window(*span) if span else None


def phase_train(daemon: Daemon, queries: np.ndarray, out: dict[str, Any]) -> None:
    with Timeline(daemon, queries) as line:
        settle(daemon, line, out, "training")


def phase_remove(
    daemon: Daemon, vectors: Vectors, queries: np.ndarray, out: dict[str, Any]
) -> None:
    """Remove folders 1..n/100k (10%), let the daemon compact, then recall@10 against exact
    search over what is left (a compaction must not lose or garble any code)."""
    folders = range(1, vectors.n // CHUNK // 10 + 1)
    with Timeline(daemon, queries) as line:
        for i in folders:
            daemon.get("/remove?image=" + urllib.request.quote(f"{ROOT}/f{i:04d}"))
        settle(daemon, line, out, "compaction")
    out["after"] = recall(daemon, queries, truth(Kept(vectors, set(folders)), queries))


class Kept(Vectors):
    """The library's vectors less some chunks (removed folders): those are replaced by one
    vector far from every query (the ground truth keeps its chunk numbering)."""

    def __init__(self, vectors: Vectors, gone: set[int]) -> None:
        self.__dict__.update(vectors.__dict__)
        self.gone = gone

    def chunk(self, i: int) -> np.ndarray:
        x = super().chunk(i)
        return np.full_like(x, -1 / np.sqrt(self.dim)) if i in self.gone else x


def phase_import(
    data: Path, vectors: Vectors, queries: np.ndarray, extra: int, out: dict[str, Any]
) -> None:
    grown = Vectors(vectors.n, vectors.dim, vectors.dist)
    grown.n = vectors.n + extra  # the same clusters, the extra chunks included
    shards = extra_shards(grown, vectors.n, extra)
    want = truth(grown, queries)
    with Daemon(FLAGS, data, start_timeout=600, env=NO_COMPACTION) as daemon:
        with Timeline(daemon, queries) as line:
            start = time.perf_counter()
            job, _ = post_json(daemon.url + "/import", {"dir": str(shards), "wait": True}, 86400)
            end = time.perf_counter()
        out["import"] = {
            "imported": job["imported"],
            "vectors_per_s": job["imported"] / (end - start),
        }
        out["import"].update(line.window(start, end))
        out["with_recent"] = {
            "index": daemon.get("/stats")["index"],
            **recall(daemon, queries, want),
        }
        out["with_recent_rss"] = rss(daemon._proc.pid)  # type: ignore[union-attr]
    start = time.perf_counter()
    with Daemon(FLAGS, data, start_timeout=600) as daemon:
        out["restart_with_recent_s"] = time.perf_counter() - start
        with Timeline(daemon, queries) as line:
            settle(daemon, line, out, "compaction")
        out["after"] = recall(daemon, queries, want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lib", type=Path, required=True, help="where the library is kept")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=("prepare", "train", "remove", "import"), required=True)
    parser.add_argument("--extra", type=int, default=200_000, help="vectors the import adds")
    parser.add_argument("--tmp", default=None, help="where the working copy goes")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    vectors = Vectors(args.n, MODELS["ViT-B-32"][1], "clustered")
    out: dict[str, Any] = {"phase": args.phase, "n": args.n, **machine()}
    out["library"] = prepare(args.lib / f"lib-{args.n}", vectors)
    queries = vectors.queries(args.queries)
    with tempfile.TemporaryDirectory(dir=args.tmp or args.lib) as tmp:
        data = Path(tmp) / "data"
        if args.phase != "prepare":
            shutil.copytree(args.lib / f"lib-{args.n}" / "data", data)
        if args.phase == "train":
            newest = sorted((data / "index").glob("*/meta.json"))[-1]
            meta = json.loads(newest.read_text())
            newest.write_text(json.dumps({**meta, "trained_count": 1}))
        if args.phase == "import":
            phase_import(data, vectors, queries, args.extra, out)
        elif args.phase != "prepare":
            with Daemon(FLAGS, data, start_timeout=600) as daemon:
                if args.phase == "train":
                    phase_train(daemon, queries, out)
                else:
                    phase_remove(daemon, vectors, queries, out)
                out["rss"] = rss(daemon._proc.pid)  # type: ignore[union-attr]
                out["log_tail"] = daemon.log_tail(8)
    out["load_after"] = machine()["load"]
    record(out, "stalls")


if __name__ == "__main__":
    main()
