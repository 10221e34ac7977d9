"""How fast a daemon exports its library, and what searches meanwhile see.

    python bench/export.py --data DATA_DIR --n 10000000 --out /work/big/export
    python bench/export.py --data DATA_DIR --n 10000000 --out DIR --tree /tmp/before --label before

Starts a daemon on DATA_DIR (from --tree, another checkout, for an A/B; the script itself is
this tree's), waits until its index is idle, then exports the library into --out (which must not
exist): `POST /export {"wait": false}` and polling `/export/ID` where the daemon has export jobs,
else (a tree before them) one `GET /export?dir=` that answers when done. Meanwhile one client
searches by vector (bench/scale.py's new-photo queries for a library of N) back to back and
another asks `/stats` every 0.1 s; the same load runs for --baseline seconds before, without an
export, to tell the export's share from the load's own. Reports the export's seconds and
rows/s, its files' bytes a row, the daemon's CPU seconds and peak RSS over the export, search
p50/p99/max and /stats p99 with and without it; prints the CPU model and load; appends one JSON
line to bench/out/export.jsonl; removes --out unless --keep-out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, get_json, percentiles, progress, record  # noqa: E402
from scale import (  # noqa: E402
    daemon_flags,
    library_args,
    library_queries,
    machine,
    post_json,
    rss,
    wait_idle,
)


class Load:
    """Searches by vector back to back, and /stats every 0.1 s, on two threads until stopped."""

    def __init__(self, daemon: Daemon, queries: Any) -> None:
        self.daemon, self.queries = daemon, queries
        self.stop = threading.Event()
        self.search_ms: list[float] = []
        self.stats_ms: list[float] = []
        self.threads = [threading.Thread(target=f) for f in (self._search, self._stats)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _search(self) -> None:
        i = 0
        while not self.stop.is_set():
            q = self.queries[i % len(self.queries)]
            body = {"vector": q.tolist(), "limit": 10}
            self.search_ms.append(post_json(self.daemon.url + "/search", body)[1])
            i += 1

    def _stats(self) -> None:
        while not self.stop.wait(0.1):
            started = time.perf_counter()
            self.daemon.get("/stats")
            self.stats_ms.append(1000 * (time.perf_counter() - started))


def export(daemon: Daemon, out: Path) -> dict[str, Any]:
    """Run one export; its job (or the old synchronous report) and its wall seconds."""
    started = time.monotonic()
    try:
        job, _ = post_json(daemon.url + "/export", {"dir": str(out), "wait": False})
    except urllib.error.HTTPError as exc:
        if exc.code != 405:  # a tree before export jobs: GET answers when done
            raise
        job = get_json(f"{daemon.url}/export?dir={urllib.parse.quote(str(out))}", timeout=7200)
        return {**job, "state": "done", "wall_s": time.monotonic() - started}
    while job["state"] in {"queued", "running"}:
        time.sleep(0.5)
        job = daemon.get(f"/export/{job['id']}")
    return {**job, "wall_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="the export folder (not existing)")
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="the daemon's source tree")
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--keep-out", action="store_true", help="leave the export in --out")
    parser.add_argument(
        "--baseline", type=float, default=30.0, help="seconds of the same load before the export"
    )
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists")
    queries = library_queries(args, 1000)
    result: dict[str, Any] = {**machine(), "label": args.label, "tree": str(args.tree)}
    result["data"] = str(args.data)
    progress(f"{result['cpu']}, load {result['load']}; {args.label}: {args.tree}")
    with Daemon(daemon_flags(args.model), args.data, start_timeout=1800, tree=args.tree) as daemon:
        index = wait_idle(daemon)
        result["images"] = index.get("vectors")
        pid = daemon._proc.pid  # type: ignore[union-attr]
        before = rss(pid)["rss_mb"]
        cpu = daemon.cpu_seconds()
        with Load(daemon, queries) as alone:  # the same clients without an export
            time.sleep(args.baseline)
        with Load(daemon, queries) as load:
            job = export(daemon, args.out)
        result["daemon_cpu_s"] = round(daemon.cpu_seconds() - cpu, 1)
        result["rss_mb"] = {"before": round(before), "peak": round(rss(pid)["peak_rss_mb"])}
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    rows = int(job["rows"])
    result["export"] = {
        "state": job["state"], "rows": rows, "files": job["files"],
        "seconds": round(job["wall_s"], 1), "rows_per_s": round(rows / job["wall_s"]),
        "bytes_a_row": round(size / max(1, rows)), "gb": round(size / 1e9, 2),
    }  # fmt: skip
    result["search_ms"] = percentiles(load.search_ms)
    result["stats_ms"] = percentiles(load.stats_ms)
    result["without_export"] = {
        "search_ms": percentiles(alone.search_ms), "stats_ms": percentiles(alone.stats_ms),
    }  # fmt: skip
    if not args.keep_out:
        shutil.rmtree(args.out)
    progress(f"{args.label}: {result['export']}")
    progress(f"search {result['search_ms']}; /stats {result['stats_ms']}")
    progress(f"without an export: {result['without_export']}")
    progress(f"daemon CPU {result['daemon_cpu_s']} s, RSS {result['rss_mb']} MB")
    record(result, "export")


if __name__ == "__main__":
    main()
