"""`imgsearch embed` on Ray Data vs `/add` of the same files, in the same run.

On generated JPEGs made from real photos, with the bundled model (EfficientNet-Lite0, offline):

1. add:      images/s of `GET /add?image=<folder>` on a real daemon subprocess;
2. ray x1:   images/s of `imgsearch embed` (the library call) with 1 worker of 1 CPU;
3. ray x2:   the same with 2 workers of 1 CPU each.

Ray runs locally (`ray.init(num_cpus=--cpus)`, started before the clock). Each embed run writes
into a fresh --out, so it includes the actors' start-up and model load (what a user waits for);
`steady` is images / (sum of shard seconds / workers), the rate once the actors are up.
The ratio ray/add is the engine's overhead (or gain) on this machine.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cluster.py [--images 96] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from _common import Daemon, cpu_model, generate_jpegs, progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgsearch.cluster.runner import EmbedOptions, embed  # noqa: E402
from imgsearch.config import OFFLINE_MODEL, Config  # noqa: E402


def add_rate(folder: Path, data_dir: Path, n: int) -> dict[str, Any]:
    with Daemon(["--model", OFFLINE_MODEL], data_dir) as daemon:
        start, cpu = time.perf_counter(), daemon.cpu_seconds()
        report = daemon.get("/add?" + urllib.parse.urlencode({"image": str(folder)}))
        elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu
    assert report["added"] == n, report
    return {"seconds": round(elapsed, 2), "images_per_s": round(n / elapsed, 2), "cpu_s": cpu}


def ray_rate(folder: Path, out: Path, workers: int, n: int, shard: int) -> dict[str, Any]:
    config = Config(model=OFFLINE_MODEL, pretrained=None, batch_size=32)
    options = EmbedOptions([str(folder)], out, config, workers=workers, shard_size=shard)
    start = time.perf_counter()
    summary = embed(options, show_progress=False)
    elapsed = time.perf_counter() - start
    assert summary.images == n, summary
    busy = sum(seconds for _, seconds in summary.per_worker.values()) / workers
    return {
        "seconds": round(elapsed, 2),
        "images_per_s": round(n / elapsed, 2),
        "steady_images_per_s": round(n / busy, 2) if busy else None,
        "per_worker": summary.as_json()["images_per_s_per_worker"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray

    folder = generate_jpegs(args.images, size=(1600, 1200))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="imgsearch-cluster-bench-") as tmp:
        root = Path(tmp)
        progress("add: a daemon indexes the folder")
        add = add_rate(folder, root / "data", args.images)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            runs = {}
            for workers in (1, 2):
                progress(f"ray: {workers} worker(s)")
                out = root / f"out{workers}"
                runs[workers] = ray_rate(folder, out, workers, args.images, args.shard_size)
        finally:
            ray.shutdown()
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_before": load,
        "images": args.images,
        "add": add,
        "ray_1_worker": runs[1],
        "ray_2_workers": runs[2],
        "ratio_ray1_to_add": round(runs[1]["images_per_s"] / add["images_per_s"], 2),
        "ratio_ray2_to_add": round(runs[2]["images_per_s"] / add["images_per_s"], 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
