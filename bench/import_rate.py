"""Bulk import rate over time at scale: part of a big import, watched, profiled, cancelled.

    python bench/import_rate.py --rows 3000000 --tmp /work/big/A            # of the 10M shards
    python bench/import_rate.py --rows 3000000 --spy 120:60 --spy 400:60    # py-spy meanwhile
    python bench/import_rate.py --rows 600000 --precision fp32              # k-means in float32
    python bench/import_rate.py --rows 1500000 --shard-rows 1000   # as `imgsearch embed` writes
    python bench/import_rate.py --rows 1000000 --poll 0.1       # /stats, /health latency too
    python bench/import_rate.py --rows 2000000 --poll 0.1 --gil-watch   # what keeps them waiting

One daemon (ViT-B-32, random weights: the model only names the vectors; `--model
efficientnet-lite0` for 1280-d shards) starts on an empty
data dir and imports a folder of shards (default: bench/scale.py's cached 10M clustered
float16 shards) with `POST /import {"wait": false}`, so the job's planned size (and the index
it trains for) is the folder's whole size; every --every seconds the job, `/stats` and the
daemon's CPU time and RSS are sampled (rate over time), and the job is cancelled once --rows
rows are done. `--spy START:SECONDS` records the daemon with py-spy (--native, every thread,
raw collapsed stacks into bench/out/) from START seconds after the import began; a summary of
where each thread's samples went is printed. `--shard-rows N` imports the first --rows rows of
the folder rewritten as files of N rows (cached in bench/out/), the way a cluster embedding
(`imgsearch embed`, 1,000 files a shard by default) leaves them; the job then plans --rows.
`--poll SECONDS` also GETs `/stats` and `/health` every SECONDS through the import (`/stats`
first; `--rotate`: each first every other time) and reports their latency percentiles (ms),
by URL and by place in the pair. `--wake`: a separate process sleeps 5 ms at a time through
the import and reports how late it woke (the wait for a CPU alone, no GIL shared with the
daemon: bench/_common.WakeProbe). `--gil-watch`: the daemon starts with bench/gilwatch on its
PYTHONPATH, whose sitecustomize.py notes where its threads are whenever a thread at the default
priority, sleeping 1 ms at a time as the event loop does, wakes late (and every 97th wake, as a
baseline); `gil_watch` then gives, from the end of the training, the late wakes (over 8 ms) a
minute, the longest, and the places met at them most often beside their share of the
baseline (a place far more common at the late wakes held the GIL or the CPUs).
`after_training` is the rate from the first sample with a trained base on (the steady rate
that the first training's minute hides in a short run).
Appends one JSON line to bench/out/import_rate.jsonl.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402
    OUT_DIR,
    PY_SPY,
    Daemon,
    LatencyPoller,
    WakeProbe,
    cpu_model,
    percentiles,
    progress,
    record,
)

SHARDS = OUT_DIR / "scale-shards-open_clip_ViT-B-32_random-clustered-10000000"
GIL_WATCH = Path(__file__).resolve().parent / "gilwatch"
# Where a thread waits (for work, a lock, a socket): not where the GIL is held.
IDLE_PLACES = (":wait", ":select", ":_worker", ":accept")


def send(url: str, method: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.load(resp)


def resharded(folder: Path, rows: int, shard_rows: int) -> Path:
    """The first `rows` rows of `folder`'s shards as files of `shard_rows` rows (cached)."""
    import pyarrow.parquet as pq

    from imgsearch.bulk.format import shard_files, write_shard

    out = OUT_DIR / f"{folder.name}-first-{rows}-by-{shard_rows}"
    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for source in shard_files(folder):
        table = pq.read_table(source)
        for start in range(0, min(len(table), rows - written), shard_rows):
            part = table.slice(start, min(shard_rows, rows - written - start))
            write_shard(out / f"part-{(written + start) // shard_rows:06d}.parquet", part)
        written += min(len(table), rows - written)
        progress(f"resharded {written:,} rows into files of {shard_rows:,}")
        if written >= rows:
            break
    (out / ".complete").write_text("ok\n")
    return out


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in GB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith("Vm")}
    return kb["VmRSS"] / 2**20, kb["VmHWM"] / 2**20


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Samples per thread, and per thread the functions (innermost Python or native frame
    of interest) they were in, from py-spy's raw collapsed stacks."""
    threads: collections.Counter[str] = collections.Counter()
    where: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0]
        threads[thread] += int(count)
        # The innermost frame of our code (imgsearch/...), plus the innermost frame overall.
        ours = next((f for f in reversed(frames) if "imgsearch/" in f), frames[-1])
        where[thread][f"{ours.split(' (')[0]} <- {frames[-1][:60]}"] += int(count)
    total = sum(threads.values()) or 1
    return {
        thread: {
            "share": round(n / total, 3),
            "top": {k: round(v / n, 3) for k, v in where[thread].most_common(top)},
        }
        for thread, n in threads.most_common()
    }


def late_wakes(path: Path, since: float, until: float, late_ms: float = 8.0) -> dict[str, Any]:
    """bench/gilwatch's log summarized from `since` (after the training) to `until`: the late
    wakes (over `late_ms`) a minute, the longest, and the places met at them most often, each
    with its share of the late wakes and of the baseline's wakes (a place much more common at
    the late wakes is where a thread held the GIL or the CPUs)."""
    late: list[float] = []
    at: collections.Counter[str] = collections.Counter()
    usual: collections.Counter[str] = collections.Counter()
    bases = 0
    for kind, ms, when, places in _blocks(path):
        if not since <= when <= until:
            continue
        if kind == "BASE":
            bases += 1
            usual.update(places)
        elif ms > late_ms:
            late.append(ms)
            at.update(places)
    minutes = max(1e-9, (until - since) / 60)
    return {
        "late_ms": late_ms, "late_a_minute": round(len(late) / minutes, 1),
        "longest_ms": max(late, default=0.0),
        "places": [
            {"place": place, "at_late": round(n / max(1, len(late)), 2),
             "at_base": round(usual[place] / max(1, bases), 2)}
            for place, n in at.most_common(12)
        ],
    }  # fmt: skip


def _blocks(path: Path) -> list[tuple[str, float, float, set[str]]]:
    """The log's records: (GAP or BASE, ms, when, the places of the threads not waiting)."""
    out: list[tuple[str, float, float, set[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith(("GAP ", "BASE ")):
            kind, ms, when = line.split()
            out.append((kind, float(ms), float(when), set()))
        elif out and line.startswith("  ["):
            thread, _, stack = line.strip().partition("] ")
            place = stack.split(" < ")[0]
            if not any(w in place for w in IDLE_PLACES):
                out[-1][3].add(f"{thread[1:]}: {place}")
    return out


def after_training(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The import's rate from the first sample with a trained base (the training over, its
    rows swapped in) to the last: the steady rate, compactions included, that the first
    minute's training hides in a short run."""
    trained = [s for s in samples if s["base"] > 0]
    if len(trained) < 2:
        return None
    first, last = trained[0], trained[-1]
    rows, seconds = last["done"] - first["done"], last["t"] - first["t"]
    return {"from_s": first["t"], "from_rows": first["done"], "rows_per_s": round(rows / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=SHARDS)
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--tmp", type=Path, default=None)
    parser.add_argument("--spy", action="append", default=[], help="START:SECONDS (repeatable)")
    parser.add_argument("--label", default="")
    parser.add_argument("--shard-rows", type=int, default=0, help="files of this many rows")
    parser.add_argument(
        "--poll", type=float, default=0.0, help="GET /stats and /health every this many s"
    )
    parser.add_argument(
        "--rotate", action="store_true", help="with --poll: each URL asked first in turn"
    )
    parser.add_argument(
        "--wake", action="store_true", help="a separate process's wake-up delays meanwhile"
    )
    parser.add_argument(
        "--gil-watch", action="store_true",
        help="where the daemon's threads are when a waiting thread wakes late (bench/gilwatch)",
    )  # fmt: skip
    parser.add_argument(
        "--model",
        choices=("ViT-B-32", "efficientnet-lite0"),
        default="ViT-B-32",
        help="the daemon's model: the shards' (efficientnet-lite0: 1280-d)",
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32"), default="auto",
        help="the daemon's --precision (fp32: the index's k-means in float32 too)",
    )  # fmt: skip
    args = parser.parse_args()
    spies = sorted(tuple(float(x) for x in s.split(":")) for s in args.spy)
    out: dict[str, Any] = {"label": args.label, "cpu": cpu_model(), "rows": args.rows}
    out["model"], out["precision"] = args.model, args.precision
    out["shard_rows"] = args.shard_rows
    folder = resharded(args.dir, args.rows, args.shard_rows) if args.shard_rows else args.dir
    out["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        flags = ["--model", args.model, "--precision", args.precision]  # (default workers)
        flags += ["--pretrained", "none"] if args.model == "ViT-B-32" else []
        watch_log = Path(tmp) / "gil-watch.txt"
        env = {}
        if args.gil_watch:
            paths = [str(GIL_WATCH), *filter(None, [os.environ.get("PYTHONPATH")])]
            env = {"PYTHONPATH": os.pathsep.join(paths), "GIL_WATCH_LOG": str(watch_log)}
        daemon = Daemon(flags, Path(tmp) / "data", env=env)
        with daemon:
            pid = daemon._proc.pid  # type: ignore[union-attr]
            job = send(
                daemon.url + "/import", "POST", {"dir": str(folder.resolve()), "wait": False}
            )
            urls = {"stats": daemon.url + "/stats", "health": daemon.url + "/health"}
            polled = LatencyPoller(
                urls if args.poll else {}, interval=args.poll or 1.0, rotate=args.rotate
            )
            probe = WakeProbe() if args.wake else nullcontext()
            with polled as poller, probe:
                start, cpu0 = time.perf_counter(), daemon.cpu_seconds()
                started_at = time.time()
                samples, running = [], []
                last = (0.0, 0, cpu0)
                while True:
                    time.sleep(args.every)
                    now = time.perf_counter() - start
                    while spies and spies[0][0] <= now:
                        at, secs = spies.pop(0)
                        OUT_DIR.mkdir(parents=True, exist_ok=True)
                        raw = OUT_DIR / f"import_rate-{args.label or 'run'}-{int(at)}.txt"
                        cmd = [str(PY_SPY), "record", "--native", "--threads", "-r", "50", "-f"]
                        cmd += ["raw", "-o", str(raw), "-d", str(int(secs)), "-p", str(pid)]
                        running.append((raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
                    state = send(f"{daemon.url}/import/{job['id']}", "GET")
                    index = send(daemon.url + "/stats", "GET")["index"]
                    cpu, (rss, peak) = daemon.cpu_seconds(), memory(pid)
                    rate = (state["done"] - last[1]) / (now - last[0])
                    cpu_rate = (state["done"] - last[1]) / max(1e-9, cpu - last[2])
                    sample = {
                        "t": round(now, 1), "done": state["done"], "rate": round(rate),
                        "per_cpu_s": round(cpu_rate), "rss_gb": round(rss, 2),
                        "state": index["state"], "base": index["base"], "recent": index["recent"],
                        "load": os.getloadavg()[0],
                    }  # fmt: skip
                    samples.append(sample)
                    progress(json.dumps(sample))
                    last = (now, state["done"], cpu)
                    if state["done"] >= args.rows or state["state"] not in ("queued", "running"):
                        break
                elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu0
            done = state["done"]
            send(f"{daemon.url}/import/{job['id']}", "DELETE")
            _, peak = memory(pid)
            for raw, proc in running:
                proc.wait()
                out[f"profile_{raw.stem}"] = summarize(raw)
            log = daemon.log_path.read_text(errors="replace").splitlines()
            trained = after_training(samples)
            if args.gil_watch:
                since = started_at + (trained["from_s"] if trained else 0.0)
                out["gil_watch"] = late_wakes(watch_log, since, time.time())
    out.update(
        {
            "done": done,
            "seconds": round(elapsed, 1),
            "vectors_per_s": round(done / elapsed),
            "daemon_cpu_s": round(cpu, 1),
            "vectors_per_cpu_s": round(done / cpu),
            "peak_rss_gb": round(peak, 2),
            "during_import_ms": {
                name: percentiles(ms, (50, 90, 99)) for name, ms in poller.latencies.items()
            },
            "during_import_ms_by_place": [
                percentiles(ms, (50, 90, 99)) for ms in poller.by_position if ms
            ],
            "poll_order_rotated": args.rotate,
            "wake_ms": probe.result if isinstance(probe, WakeProbe) else None,
            "after_training": trained,
            "poll_errors": poller.errors[:10],
            "load_after": os.getloadavg(),
            "samples": samples,
            "log": [line for line in log if "index" in line or "import" in line][-60:],
        }
    )
    record(out, "import_rate")


if __name__ == "__main__":
    main()
