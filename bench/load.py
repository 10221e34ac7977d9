"""Latency of /stats, /health and /search while a long /add runs, against a real daemon.

Loopback only, bounded in requests and time. Two phases in one run: searches on an idle
daemon (the baseline), then the same searches while `/add` indexes a folder, with /stats and
/health polled all along. Prints percentiles, the ratio busy/idle for searches, and how many
requests got 503 (back-pressure) instead of queueing.

    .venv/bin/python bench/load.py [--images 200] [--clients 4] [--json bench/out/load.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from _common import Daemon, LatencyPoller, generate_jpegs, percentiles, progress

MAX_REQUESTS_PER_CLIENT = 20_000
MAX_SECONDS = 900.0


class SearchClients:
    """`n` threads each searching in a loop until stopped (or a request/time cap)."""

    def __init__(self, url: str, queries: list[Path], n: int) -> None:
        self.url = url
        self.queries = queries
        self.latencies: list[float] = []
        self.busy = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(n)]

    def _loop(self, index: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for i in range(MAX_REQUESTS_PER_CLIENT):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            query = self.queries[(index + i) % len(self.queries)]
            params = urllib.parse.urlencode({"image": str(query), "limit": 10})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.url}/search?{params}", timeout=60) as resp:
                    resp.read()
                elapsed = (time.perf_counter() - start) * 1000
                with self._lock:
                    self.latencies.append(elapsed)
            except urllib.error.HTTPError as exc:
                with self._lock:
                    if exc.code == 503:
                        self.busy += 1
                    else:
                        self.errors.append(f"HTTP {exc.code}")
                time.sleep(0.05 if exc.code == 503 else 0)
            except OSError as exc:
                with self._lock:
                    self.errors.append(str(exc))

    def __enter__(self) -> SearchClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "count": len(self.latencies),
            "per_s": len(self.latencies) / seconds if seconds else 0.0,
            "busy_503": self.busy,
            "errors": len(self.errors),
            **percentiles(self.latencies, (50, 95, 99)),
        }


def run(images: int, clients: int, model: str, idle_seconds: float) -> dict[str, Any]:
    folder = generate_jpegs(images, size=(2000, 1500), quality=90)
    seed = generate_jpegs(24, size=(1200, 900), quality=90, seed=1)
    queries = sorted(seed.glob("*.jpg"))[:8]
    with tempfile.TemporaryDirectory(prefix="imgsearch-load-") as tmp:
        daemon = Daemon(["--model", model], Path(tmp) / "data")
        with daemon:
            daemon.get(f"/add?image={urllib.parse.quote(str(seed))}")
            progress(f"idle phase: {clients} search clients for {idle_seconds:.0f} s")
            with SearchClients(daemon.url, queries, clients) as idle:
                time.sleep(idle_seconds)
            idle_summary = idle.summary(idle_seconds)

            progress(f"busy phase: /add of {images} images with {clients} search clients")
            urls = {"stats": daemon.url + "/stats", "health": daemon.url + "/health"}
            report: dict[str, Any] = {}
            with (
                LatencyPoller(urls, interval=0.02) as poller,
                SearchClients(daemon.url, queries, clients) as busy,
            ):
                start = time.perf_counter()
                report = daemon.get(f"/add?image={urllib.parse.quote(str(folder))}")
                add_seconds = time.perf_counter() - start
            busy_summary = busy.summary(add_seconds)
    return {
        "images": images,
        "clients": clients,
        "model": model,
        "add_seconds": add_seconds,
        "add_report": {k: report[k] for k in ("added", "updated", "skipped", "failed")},
        "search_idle": idle_summary,
        "search_during_add": busy_summary,
        "stats_during_add": {"count": len(poller.latencies["stats"]),
                             **percentiles(poller.latencies["stats"], (50, 95, 99))},
        "health_during_add": {"count": len(poller.latencies["health"]),
                              **percentiles(poller.latencies["health"], (50, 95, 99))},
        "poll_errors": poller.errors[:10],
    }  # fmt: skip


def print_report(r: dict[str, Any]) -> None:
    rate = r["images"] / r["add_seconds"]
    print(f"\n/add of {r['images']} 3 MP JPEGs with {r['model']}: {r['add_seconds']:.1f} s "
          f"({rate:.1f} img/s), {r['clients']} search clients")  # fmt: skip
    print(f"{'endpoint':28} {'count':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'503s':>5}")
    for key, label in (
        ("search_idle", "/search, idle daemon"),
        ("search_during_add", "/search, during /add"),
        ("stats_during_add", "/stats, during /add"),
        ("health_during_add", "/health, during /add"),
    ):
        s = r[key]
        print(f"{label:28} {s['count']:>6} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['p99']:>8.1f} "
              f"{s.get('busy_503', 0):>5}")  # fmt: skip
    ratio = r["search_during_add"]["p50"] / r["search_idle"]["p50"]
    print(f"search p50 during /add / idle: {ratio:.2f}x")
    ok = r["stats_during_add"]["p99"] < 50 and r["health_during_add"]["p99"] < 50
    print(f"goal /stats and /health p99 < 50 ms during /add: {'met' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.images, args.clients, args.model, args.idle_seconds)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
