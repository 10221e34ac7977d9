"""The first searches after a restart from a cold page cache, on a library already built.

    python bench/first_searches.py --data DATA_DIR --n 10000000 --dist spectral
    python bench/first_searches.py --data DATA_DIR --n 10000000 --dist spectral --tree /tmp/before

Drops the page cache (as root: `sync; echo 3 > /proc/sys/vm/drop_caches`; otherwise the data
dir's files only, posix_fadvise DONTNEED), starts a daemon on DATA_DIR (bench/scale.py --keep's
data dir) and, the moment `/health` answers, searches by vector back to back for --seconds
(bench/scale.py's new-photo queries for a library of N, a new connection each). Reports the
first searches' latencies, the p50 / max of those in the first and the later half, and the
daemon's own log lines about them (slow searches, the fine codes read in). --tree DIR runs the
daemon from another checkout, for A/B runs in turns. Prints the CPU model and load; appends one
JSON line to bench/out/first_searches.jsonl.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, cpu_model, percentiles, progress, record  # noqa: E402
from scale import daemon_flags, library_args, library_queries, post_json  # noqa: E402

LOGGED = ("slow search", "fine codes read in", "index ")


def drop_page_cache(data: Path) -> str:
    """The whole page cache where allowed (root), else the data dir's files'; how it was done."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "all"
    except OSError:
        for path in data.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "data dir"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="the daemon's source tree")
    args = parser.parse_args()
    queries = library_queries(args, 500)
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg()[0], "n": args.n}
    out |= {"data": str(args.data), "tree": str(args.tree)}
    out["dropped"] = drop_page_cache(args.data)
    started = time.monotonic()
    with Daemon(daemon_flags(args.model), args.data, start_timeout=1800, tree=args.tree) as daemon:
        healthy = time.monotonic()
        out["start_s"] = healthy - started
        times: list[float] = []
        while time.monotonic() - healthy < args.seconds:
            q = queries[len(times) % len(queries)]
            times.append(post_json(daemon.url + "/search", {"vector": q.tolist()})[1])
        time.sleep(3)  # the read-in's log line
        lines = daemon.log_path.read_text(errors="replace").splitlines()
    half = len(times) // 2
    out["first_ms"] = [round(t, 1) for t in times[:8]]
    out["first_half_ms"] = percentiles(times[:half])
    out["second_half_ms"] = percentiles(times[half:])
    out["log"] = [line[:260] for line in lines if any(mark in line for mark in LOGGED)]
    progress(f"first {out['first_ms']}; first half {out['first_half_ms']}")
    record(out, "first_searches")


if __name__ == "__main__":
    main()
