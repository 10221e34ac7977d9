"""Bulk import rate: POST /import of N synthetic 512-d vectors into a real daemon subprocess.

The daemon runs a 512-d open_clip config with random weights (the model only names the
vectors here: an import embeds nothing). Vectors are clustered like real embeddings (many
clusters of varied spread); shards of --shard-rows rows are written first (not timed), then
`POST /import {"wait": true}` is timed while a thread polls /stats and /health every 20 ms.
Training and compaction wait for an import to end: `index_settled_s` is the time until the
index has caught up (trained, recent segment folded in), from the start of the import.
Goal: >= 20,000 vectors/s. `vectors_per_cpu_s` (the daemon's CPU, all threads, polling
included) is steadier than wall time on a shared machine; --no-poll leaves the polling out.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/import.py [--vectors 200000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from _common import Daemon, LatencyPoller, cpu_model, percentiles, progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgsearch.bulk.format import table_of, write_shard  # noqa: E402
from imgsearch.index import Policy  # noqa: E402

MODEL = "imgsearch-bench-512"
CONFIG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around n/100 centres with spreads from tight to loose."""
    centres = rng.normal(size=(max(1, n // 100), dim)).astype(np.float32)
    which = rng.integers(0, len(centres), n)
    spread = rng.uniform(0.05, 0.6, len(centres))[which, None].astype(np.float32)
    out = centres[which] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def write_shards(folder: Path, n: int, shard_rows: int, model_id: str) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for start in range(0, n, shard_rows):
        rows = min(shard_rows, n - start)
        paths = [
            f"/archive/{i // 10_000:04d}/{i // 1000:05d}/{i:09d}.jpg"
            for i in range(start, start + rows)
        ]
        facts: dict[str, list[Any]] = {
            "size": [100_000 + i for i in range(rows)],
            "mtime_ns": [1_700_000_000_000_000_000 + i for i in range(rows)],
        }
        table = table_of(model_id, 512, paths, clustered(rows, 512, rng), facts)
        write_shard(folder / f"part-{start // shard_rows:05d}.parquet", table)
        progress(f"wrote {start + rows}/{n} vectors")


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=7200) as resp:
        return json.load(resp)


def settled_index(index: dict[str, Any]) -> bool:
    """No training or compaction running or due (the recent segment under its threshold)."""
    return index["state"] == "idle" and index["recent"] <= Policy().delta_limit(index["base"])


def timed_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as resp:
        resp.read()
    return (time.perf_counter() - start) * 1000


def one_at_a_time(daemon: Daemon, root: Path, n: int, count: int = 20) -> dict[str, Any]:
    """Remove single imported images, add single new files (a tiny JPEG each: the bench
    model's embedding is a few ms), then remove a folder of 10,000 images; over HTTP."""
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = root / "singles"
    folder.mkdir()
    files = []
    for i in range(count):
        files.append(folder / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(files[-1])
    picks = rng.choice(n, count, replace=False)
    removes = [
        timed_ms(
            f"{daemon.url}/remove?image=/archive/{i // 10_000:04d}/{i // 1000:05d}/{i:09d}.jpg"
        )
        for i in picks
    ]
    adds = [timed_ms(f"{daemon.url}/add?image={urllib.request.quote(str(f))}") for f in files]
    out = {"remove_one_ms": percentiles(removes), "add_one_ms": percentiles(adds)}
    if n >= 20_000:
        out["remove_10k_folder_ms"] = timed_ms(f"{daemon.url}/remove?image=/archive/0001")
    progress(json.dumps(out))
    return out


def first_start(daemon: Daemon, query: list[float]) -> dict[str, Any]:
    """Restart without a saved index: when /health answers, the first search, the base ready."""
    daemon.stop()
    shutil.rmtree(daemon.data_dir / "index")
    start = time.perf_counter()
    daemon.start()
    out: dict[str, Any] = {"first_start_health_s": round(time.perf_counter() - start, 2)}
    progress(f"first start: /health after {out['first_start_health_s']} s")
    out["index_state_at_start"] = daemon.get("/stats")["index"]["state"]
    searched = time.perf_counter()
    try:
        post(daemon.url + "/search", {"vector": query, "k": 10})
        out["search_while_building"] = "200"
    except urllib.error.HTTPError as exc:  # 503 + Retry-After past STORE_SCAN_MAX
        out["search_while_building"] = f"{exc.code} (Retry-After {exc.headers['Retry-After']})"
    out["search_while_building_ms"] = round((time.perf_counter() - searched) * 1000, 1)
    while daemon.get("/stats")["index"]["state"] != "idle":
        time.sleep(0.5)
    out["first_start_index_ready_s"] = round(time.perf_counter() - start, 2)
    searched = time.perf_counter()
    post(daemon.url + "/search", {"vector": query, "k": 10})
    out["search_after_ms"] = round((time.perf_counter() - searched) * 1000, 1)
    progress(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--no-poll", action="store_true", help="no /stats polling meanwhile")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--writes", action="store_true", help="then time single adds/removes and a first start"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgsearch-import-bench-") as tmp:
        root = Path(tmp)
        config = root / f"{MODEL}.json"
        config.write_text(json.dumps(CONFIG))
        flags = ["--model", MODEL, "--pretrained", "none", "--model-config", str(config)]
        with Daemon(flags, root / "data") as daemon:
            model_id = daemon.get("/stats")["model"]
            write_shards(root / "shards", args.vectors, args.shard_rows, model_id)
            urls = {"stats": daemon.url + "/stats", "health": daemon.url + "/health"}
            urls = {} if args.no_poll else urls
            progress(f"importing {args.vectors} vectors")
            with LatencyPoller(urls) as poller:
                start, cpu0 = time.perf_counter(), daemon.cpu_seconds()
                job = post(daemon.url + "/import", {"dir": str(root / "shards"), "wait": True})
                elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu0
            stats = daemon.get("/stats")
            while not settled_index(stats["index"]):
                time.sleep(0.5)  # the import held training/compaction: the index catches up
                stats = daemon.get("/stats")
            settled, cpu_settled = time.perf_counter() - start, daemon.cpu_seconds() - cpu0
            progress(
                f"imported in {elapsed:.1f} s ({cpu:.1f} CPU s), index settled at {settled:.1f} s"
            )
            disk = sum(f.stat().st_size for f in (root / "data").rglob("*") if f.is_file())
            writes: dict[str, Any] = {}
            if args.writes:
                writes = one_at_a_time(daemon, root, args.vectors)
                writes.update(
                    first_start(daemon, clustered(1, 512, np.random.default_rng(2))[0].tolist())
                )
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
        "vectors": args.vectors,
        "imported": job["imported"],
        "state": job["state"],
        "seconds": round(elapsed, 2),
        "vectors_per_s": round(job["imported"] / elapsed),
        "daemon_cpu_s": round(cpu, 1),
        "vectors_per_cpu_s": round(job["imported"] / cpu),
        "index_settled_s": round(settled, 2),
        "daemon_cpu_s_until_settled": round(cpu_settled, 1),
        "index_after": {k: stats["index"][k] for k in ("kind", "base", "recent", "nprobe")},
        "images_after": stats["images"],
        "index_vectors": stats["index"]["vectors"],
        **{f"{name}_ms": percentiles(ms) for name, ms in poller.latencies.items()},
        "data_dir_bytes_per_image": round(disk / max(1, stats["images"])),
        **writes,
        "load_avg_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
