"""Where a daemon's search by vector spends its time, on a library already built.

    python bench/search_profile.py --data DATA_DIR --n 10000000        # bench/scale.py's library
    python bench/search_profile.py --data DATA_DIR --n 10000000 --seconds 60 --model ViT-B-32
    python bench/search_profile.py --data DATA_DIR --n 10000000 --recall 0.9 --truth 200

Starts a daemon on DATA_DIR (a copy of bench/scale.py's data dir, for instance; the daemon may
replay and compact what is newer than its saved base, so the script waits until the index is
idle), sends bench/scale.py's new-photo queries for a library of N (`POST /search {"vector"}`,
one client, back to back) for --seconds on a new connection each (as bench/scale.py measures),
then for as long on one kept-alive connection: the latencies, and the mean ms a search by
stage as the daemon timed them (/stats' `index.search_time`: probed lists, fine codes,
re-scoring; `rest` is the mean latency beyond them). Then (unless --no-profile) as long again
while py-spy records the daemon (--native, every thread; `pip install -e '.[bench]'`), and prints
where the busy samples went (shares, and CPU ms a search: every thread's, so a scan split over
two threads counts both halves): FAISS's scan of the lists, the coarse assignment, the ranking
by fine codes, the re-scoring read from SQLite, HTTP and JSON, the rest. Appends one JSON line
to bench/out/search_profile.jsonl. --recall R starts the daemon with `--recall R` (it tunes
the saved base again for that target before the script goes on; `retune_s` is how long that
took, from the daemon's log); --tree DIR runs the daemon from another checkout. --truth Q
measures recall@10 of the first Q queries against exact search over the library's present
rows (read from its database, read-only; cached in bench/out). --cold-start drops the data
dir's files (database, saved index, fine codes) from the page cache before the daemon starts,
as after a reboot; each phase then records /stats' `database_warm` at its end (how much of the
database the daemon had read into the page cache); --wait-warm starts timing only once that
read has ended. --flag passes a flag to the daemon (--flag=--warm-database=on). --drop-cache
drops the database
file from the page cache before each timed phase (posix_fadvise DONTNEED), so the re-scoring
reads come from the disk as after a restart of a library bigger than the page cache; without
it they depend on what earlier runs left there. --tail then searches for --seconds more (kept
alive, a `GET /stats` after each) and reports the mean stages of the median searches and of the
slowest 1%: what a p99 is made of.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, PY_SPY, REPO_ROOT, Daemon, cpu_model, percentiles, progress, record  # noqa: E402
from scale import (  # noqa: E402
    K,
    daemon_flags,
    library_args,
    library_queries,
    post_json,
    wait_idle,
)

from imgsearch.catalog import DB_FILE  # noqa: E402
from imgsearch.index.hits import exact_among, merge  # noqa: E402
from imgsearch.store.images import vector_chunks  # noqa: E402

# What a busy sample was doing, by the frames anywhere in its stack (first match wins).
STAGES = (
    ("scan of the probed lists (FAISS)", ("pq4_accumulate", "search_implem", "preassigned")),
    ("coarse assignment (FAISS)", ("IndexFlat", "HNSW", "exhaustive_", "_search_assigned", "knn_")),
    ("re-scoring read (SQLite)", ("sqlite", "imgsearch/store/")),
    ("ranking by fine codes (numpy)", ("imgsearch/index/fine.py",)),
    ("re-scoring (numpy)", ("rescored",)),
    ("HTTP, JSON, results (aiohttp, imgsearch/web)", ("aiohttp/", "imgsearch/web/", "json/")),
)
RATE = 100  # py-spy samples a second
# A thread waiting for work or for I/O readiness (py-spy --native samples idle threads too).
IDLE = ("_queue_SimpleQueue_get", "epoll_wait", "select (", "PyThread_acquire_lock")


def stage(frames: list[str]) -> str | None:
    """The stage of a sample, or None when its thread was idle."""
    stack = ";".join(frames)
    if any(mark in frames[-1] or mark in stack[-300:] for mark in IDLE):
        return None
    for name, marks in STAGES:
        if any(mark in stack for mark in marks):
            return name
    return "other: " + next((f for f in reversed(frames) if ".py:" in f), frames[-1])[:70]


def summarize(raw: Path) -> collections.Counter[str]:
    """Busy samples of every thread of the daemon, by stage."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        name = stage(stack.split(";"))
        if name is not None:
            counts[name] += int(count)
    return counts


def searching(
    daemon: Daemon, queries: Any, seconds: float, keep_alive: bool = False
) -> list[float]:
    """Searches by vector back to back for `seconds`: their latencies (ms). Each on a new
    connection (urllib, as scale.py measures), or all on one kept-alive connection."""
    times: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port) if keep_alive else None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        q = queries[len(times) % len(queries)]
        body = {"vector": q.tolist(), "limit": 10}
        if conn is None:
            times.append(post_json(daemon.url + "/search", body)[1])
            continue
        start = time.perf_counter()
        conn.request("POST", "/search", json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        json.loads(reply.read())
        times.append((time.perf_counter() - start) * 1000)
    if conn is not None:
        conn.close()
    return times


def timed(daemon: Daemon, queries: Any, seconds: float, keep_alive: bool) -> dict[str, Any]:
    """Latencies of back-to-back searches, and the mean ms a search by stage as the daemon
    timed them (/stats' index.search_time, differences); `rest`: the mean latency beyond the
    index's stages (HTTP, JSON, hand-offs between threads, the hits' paths and metadata)."""
    before = daemon.get("/stats")["index"].get("search_time", {})  # (none before 3273245)
    times = searching(daemon, queries, seconds, keep_alive)
    after = daemon.get("/stats")["index"].get("search_time", {})
    count = max(1, after.get("searches", 0) - before.get("searches", 0))
    stages = {
        name: round((after[name] - before[name]) / count, 3) for name in after if name != "searches"
    }
    stages["rest"] = round(sum(times) / len(times) - sum(stages.values()), 3)
    return {"search_ms": percentiles(times), "mean_ms": sum(times) / len(times), "stages": stages}


def tail(daemon: Daemon, queries: Any, seconds: float) -> dict[str, Any]:
    """Each search's stages (kept alive, a `GET /stats` after each: the daemon's sums'
    differences) for `seconds`: the median search's and the slowest 1%'s mean ms by stage,
    so a p99 can be told apart (the scan, the fine codes' pages, the re-scoring reads)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port)

    def sums() -> dict[str, float]:
        conn.request("GET", "/stats")
        return dict(json.loads(conn.getresponse().read())["index"]["search_time"])

    rows: list[tuple[float, dict[str, float]]] = []
    last = sums()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = json.dumps({"vector": queries[len(rows) % len(queries)].tolist(), "limit": 10})
        start = time.perf_counter()
        conn.request("POST", "/search", body, {"Content-Type": "application/json"})
        json.loads(conn.getresponse().read())
        ms = (time.perf_counter() - start) * 1000
        now = sums()
        each = {name: now[name] - last[name] for name in now if name != "searches"}
        each["rest"] = ms - sum(each.values())
        rows.append((ms, each))
        last = now
    conn.close()
    rows.sort(key=lambda row: row[0])
    slowest = rows[-max(1, len(rows) // 100) :]
    middle = rows[len(rows) // 2 - 5 : len(rows) // 2 + 5] or rows

    def mean(group: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
        names = group[0][1]
        out = {name: round(sum(r[1][name] for r in group) / len(group), 2) for name in names}
        return {"ms": round(sum(r[0] for r in group) / len(group), 2), **out}

    return {"searches": len(rows), "median": mean(middle), "slowest_1pct": mean(slowest)}


WARMING = ("waiting", "reading")  # /stats' database_warm states before it ends


def drop_cache(path: Path) -> None:
    """`path`'s pages out of the page cache (those of no process's dirty writes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def exact_truth(data: Path, queries: np.ndarray) -> dict[int, list[str]]:
    """Each query's exact 10 nearest stored images (paths) among the present rows of the
    library's database, read-only (cached in bench/out by the database's size and mtime)."""
    db = data / DB_FILE
    stat = db.stat()
    key = hashlib.sha256(f"{db.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    key.update(queries.tobytes())
    cached = OUT_DIR / f"search_profile-truth-{key.hexdigest()[:16]}.json"
    if cached.is_file():
        return {int(q): paths for q, paths in json.loads(cached.read_text()).items()}
    progress(f"exact ground truth of {len(queries)} queries from {db}")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    best = (np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64))
    cursor = conn.execute("SELECT id, vector FROM images WHERE missing=0")
    for chunk in vector_chunks(cursor, 100_000, queries.shape[1]):
        best = merge([best, exact_among(queries, K, chunk.ids, chunk.vectors)], K)
    best_i = best[1]
    ids = sorted(set(best_i.ravel().tolist()))
    marks = ",".join("?" * len(ids))
    paths = dict(conn.execute(f"SELECT id, path FROM images WHERE id IN ({marks})", ids))
    truth = {q: [paths[int(i)] for i in row] for q, row in enumerate(best_i)}
    cached.write_text(json.dumps(truth))
    return truth


def exact_truth_ids(data: Path, queries: np.ndarray) -> list[set[int]]:
    """exact_truth() as each query's set of store ids."""
    truth = exact_truth(data, queries)
    paths = sorted({p for want in truth.values() for p in want})
    marks = ",".join("?" * len(paths))
    conn = sqlite3.connect(f"file:{data / DB_FILE}?mode=ro", uri=True)
    try:
        id_of = dict(conn.execute(f"SELECT path, id FROM images WHERE path IN ({marks})", paths))
    finally:
        conn.close()
    return [{id_of[p] for p in truth[q]} for q in range(len(queries))]


def recall(daemon: Daemon, queries: np.ndarray, truth: dict[int, list[str]]) -> float:
    """recall@10 of the daemon's answers against `truth`."""
    hits = 0
    for q, want in truth.items():
        body = post_json(daemon.url + "/search", {"vector": queries[q].tolist(), "limit": K})[0]
        hits += len({r["image"] for r in body["results"]} & set(want))
    return hits / max(1, sum(len(w) for w in truth.values()))


def retune_seconds(log: Path) -> float | None:
    """How long the daemon's re-tuning took (its log's line), if it re-tuned at this start."""
    found = re.findall(
        r"index re-tuned at \d+ vectors in ([\d.]+)s", log.read_text(errors="replace")
    )
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument(
        "--no-profile", action="store_true", help="only the latencies and the daemon's stages"
    )
    parser.add_argument("--recall", type=float, help="the daemon's --recall (default its own)")
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="the daemon's source tree")
    parser.add_argument(
        "--truth", type=int, default=0, help="recall@10 of this many queries against exact search"
    )
    parser.add_argument(
        "--drop-cache", action="store_true", help="the database out of the page cache first"
    )
    parser.add_argument(
        "--flag", action="append", default=[],
        help="a flag for the daemon (repeatable; e.g. --flag=--warm-database=on)",
    )  # fmt: skip
    parser.add_argument(
        "--wait-warm", action="store_true",
        help="time only once the daemon has read its database into the page cache",
    )  # fmt: skip
    parser.add_argument(
        "--cold-start", action="store_true",
        help="the data dir's files (database, index) out of the page cache before the start",
    )  # fmt: skip
    parser.add_argument(
        "--tail", action="store_true", help="then each search's stages: the median's, the 1%%'s"
    )
    args = parser.parse_args()
    flags = daemon_flags(args.model) + (["--recall", str(args.recall)] if args.recall else [])
    flags += args.flag
    queries = library_queries(args, 1000)
    out: dict[str, Any] = {"cpu": cpu_model(), "n": args.n, "data": str(args.data)}
    out["daemon_recall_flag"] = args.recall
    out["drop_cache"] = args.drop_cache
    out["cold_start"], out["daemon_flags"] = args.cold_start, args.flag
    truth = exact_truth(args.data, queries[: args.truth]) if args.truth else None
    if args.cold_start:
        for path in [args.data / DB_FILE, *(args.data / "index").rglob("*")]:
            if path.is_file():
                drop_cache(path)
    with Daemon(flags, args.data, start_timeout=1800, tree=args.tree) as daemon:
        out["index"] = wait_idle(daemon)
        out["retune_s"] = retune_seconds(daemon.log_path)
        if truth is not None:
            out["recall_at_10"] = recall(daemon, queries, truth)
        for q in queries[:20]:  # warm: the first searches read the base's pages
            post_json(daemon.url + "/search", {"vector": q.tolist(), "limit": 10})
        if args.wait_warm:
            started = time.monotonic()
            while (daemon.get("/stats").get("database_warm") or {}).get("state") in WARMING:
                time.sleep(0.5)
            out["waited_for_warm_s"] = round(time.monotonic() - started, 1)
        if args.drop_cache:
            drop_cache(args.data / DB_FILE)
        out["new_connection"] = timed(daemon, queries, args.seconds, keep_alive=False)
        out["search_ms"] = out["new_connection"]["search_ms"]
        out["new_connection"]["database_warm"] = daemon.get("/stats").get("database_warm")
        if args.drop_cache:
            drop_cache(args.data / DB_FILE)
        out["kept_alive"] = timed(daemon, queries, args.seconds, keep_alive=True)
        out["kept_alive"]["database_warm"] = daemon.get("/stats").get("database_warm")
        if args.tail:
            if args.drop_cache:
                drop_cache(args.data / DB_FILE)
            out["tail"] = tail(daemon, queries, args.seconds)
        if args.no_profile:
            progress(f"search {out['new_connection']}; kept alive {out['kept_alive']}")
            record(out, "search_profile")
            return
        # Then again under py-spy (it pauses the daemon to sample: latencies not reported).
        raw = OUT_DIR / "search_profile.txt"
        pid = daemon._proc.pid  # type: ignore[union-attr]
        cmd = [str(PY_SPY), "record", "--native", "--threads", "-r", str(RATE), "-f", "raw"]
        cmd += ["-o", str(raw), "-d", str(int(args.seconds)), "-p", str(pid)]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        profiled = len(searching(daemon, queries, args.seconds, keep_alive=False))
        spy.wait()
        counts = summarize(raw)
        total = sum(counts.values()) or 1
        out["stages"] = {name: round(n / total, 3) for name, n in counts.most_common(12)}
        # Busy CPU a search, by stage (every thread: a split scan counts both halves).
        out["profiled_searches"] = profiled
        out["cpu_ms_per_search"] = {
            name: round(n / RATE * 1000 / max(1, profiled), 2) for name, n in counts.most_common(12)
        }
    progress(f"search {out['search_ms']}; stages {out['stages']}")
    record(out, "search_profile")


if __name__ == "__main__":
    main()
