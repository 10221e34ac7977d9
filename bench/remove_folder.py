"""What removing a folder of 10,000 images costs the daemon, on a library already built.

    python bench/remove_folder.py --data DATA_DIR --n 10000000 --dist spectral --first 101
    python bench/remove_folder.py --data DATA_DIR --n 10000000 --first 111 --tree /tmp/before

Starts a daemon on DATA_DIR (bench/scale.py --keep's data dir: its imported vectors sit in
folders of 10,000 under /imgsearch-scale/fNNNN), waits until its index is idle, then removes
--folders folders one by one from fNNNN = --first on (`GET /remove?image=FOLDER`) while a
client searches by vector back to back, as bench/scale.py measures it (--no-load: nothing
else runs). Reports each removal's ms (p50 / max) and the searches' latencies meanwhile.
The removals are real: run each tree on folders of its own (--first), A/B in turns.
--tree DIR runs the daemon from another checkout. Prints the CPU model and load; appends one
JSON line to bench/out/remove_folder.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, cpu_model, percentiles, progress, record  # noqa: E402
from scale import (  # noqa: E402
    ROOT,
    Searching,
    daemon_flags,
    library_args,
    library_queries,
    timed_get,
    wait_idle,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    library_args(parser)
    parser.add_argument("--first", type=int, required=True, help="the first folder's number")
    parser.add_argument("--folders", type=int, default=10)
    parser.add_argument("--no-load", action="store_true", help="no searches meanwhile")
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="the daemon's source tree")
    args = parser.parse_args()
    queries = library_queries(args, 1000)
    folders = [f"{ROOT}/f{i:04d}" for i in range(args.first, args.first + args.folders)]
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg()[0], "n": args.n}
    out |= {"data": str(args.data), "tree": str(args.tree), "first": args.first}
    with Daemon(daemon_flags(args.model), args.data, start_timeout=1800, tree=args.tree) as daemon:
        wait_idle(daemon)
        times: list[float] = []
        load = None if args.no_load else Searching(daemon, queries)
        with load or contextlib.nullcontext():
            for folder in folders:
                times.append(timed_get(daemon, "/remove?image=" + urllib.parse.quote(folder)))
        out["remove_folder_ms"] = percentiles(times)
        out["each_ms"] = [round(t, 1) for t in times]
        out["images_left"] = daemon.get("/stats")["images"]
        out["search_ms_meanwhile"] = percentiles(load.times) if load else None
    progress(f"remove a folder {out['remove_folder_ms']}; searches {out['search_ms_meanwhile']}")
    record(out, "remove_folder")


if __name__ == "__main__":
    main()
