"""Bulk import and restart: trainings, import rate, and where a start with a saved base goes.

    python bench/restart.py --n 1000000 --tmp /work/big/B
    python bench/restart.py --n 1000000 --recent 160000 --tmp /work/big/B

One daemon (ViT-B-32, random weights: 512-d) starts on an empty data dir and imports N cached
clustered shards (bench/scale.py's, written there first if missing) with POST /import, timed;
the daemon log says how often the index trained and compacted. Once the index has settled the
daemon is stopped and started again on the saved base: time to /health and the daemon's own
split (model load; base opened, deletions found, rows replayed). With --recent R, R more rows
are then imported, a folder of 10,000 removed and the daemon killed (-9) the moment the import
returns, and started again: the replay of what SQLite has beyond the base. Prints one JSON
object and appends it to bench/out/restart.jsonl.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import OUT_DIR, Daemon, progress, record  # noqa: E402
from scale import CHUNK, MODELS, Vectors, machine, post_json, rss, wait_idle, write_shards  # noqa: E402

RECENT_ROOT = "/imgsearch-recent"
PATTERNS = {
    "trainings": r"index built: (\S+), (\d+) vectors in ([\d.]+)s",
    "swaps": r"index swapped in: (\S+), (\d+) vectors",
    "model_load_s": r"model loaded in ([\d.]+)s",
    "index_open": r"index \S+: \d+ vectors in [\d.]+s \(base opened.*",
}


def log_facts(daemon: Daemon) -> dict[str, Any]:
    """What the daemon log says: trainings, swaps (trainings + compactions), start-up split."""
    text = daemon.log_path.read_text(errors="replace")
    out: dict[str, Any] = {
        "trainings": [m.groups() for m in re.finditer(PATTERNS["trainings"], text)],
        "swaps": len(re.findall(PATTERNS["swaps"], text)),
        "index_open": [m.group(0) for m in re.finditer(PATTERNS["index_open"], text)],
    }
    if found := re.search(PATTERNS["model_load_s"], text):
        out["model_load_s"] = float(found.group(1))
    return out


def keep_log(daemon: Daemon, label: str, phase: str) -> None:
    """A copy of the daemon's log in bench/out/restart-logs/ (the data dir goes away)."""
    folder = OUT_DIR / "restart-logs"
    folder.mkdir(exist_ok=True)
    (folder / f"{label or 'run'}-{phase}.log").write_bytes(daemon.log_path.read_bytes())


def import_timed(daemon: Daemon, folder: Path) -> dict[str, Any]:
    start, cpu = time.perf_counter(), daemon.cpu_seconds()
    job, _ = post_json(daemon.url + "/import", {"dir": str(folder), "wait": True}, timeout=86400)
    elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu
    return {
        "state": job["state"], "imported": job["imported"], "seconds": round(elapsed, 1),
        "vectors_per_s": round(job["imported"] / elapsed), "cpu_s": round(cpu, 1),
        "rss": rss(daemon._proc.pid),  # type: ignore[union-attr]
    }  # fmt: skip


def started(daemon: Daemon) -> dict[str, Any]:
    start = time.perf_counter()
    daemon.start()
    out = {"to_health_s": round(time.perf_counter() - start, 2)}
    out.update(log_facts(daemon))
    out["rss"] = rss(daemon._proc.pid)  # type: ignore[union-attr]
    out["index"] = daemon.get("/stats")["index"]
    return out


def recent_shards(n: int, after: int, dim: int, model_id: str, folder: Path) -> Path:
    """n more clustered vectors (the chunks after the first `after`) under RECENT_ROOT."""
    import pyarrow as pa

    from imgsearch.bulk.format import schema, write_shard

    folder.mkdir(parents=True, exist_ok=True)
    vectors = Vectors(after + n + CHUNK, dim, "clustered")
    chunks = [vectors.chunk(after // CHUNK + i) for i in range((n + CHUNK - 1) // CHUNK)]
    x = np.concatenate(chunks)[:n]
    sch = schema(model_id, dim, float16=True)
    flat = pa.array(x.astype(np.float16).reshape(-1), pa.float16())
    columns = {
        "path": pa.array([f"{RECENT_ROOT}/{i:07d}.jpg" for i in range(n)], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    full = {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in sch}
    write_shard(folder / "recent.parquet", pa.Table.from_pydict(full, schema=sch))
    return folder


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_id, dim = MODELS["ViT-B-32"]
    out: dict[str, Any] = {"n": args.n, "recent": args.recent, **machine()}
    shards, _ = write_shards(Vectors(args.n, dim, "clustered"), model_id)
    flags = ["--model", "ViT-B-32", "--pretrained", "none", "--workers", "1"]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        data_dir = Path(tmp) / "data"
        daemon = Daemon(flags, data_dir, start_timeout=3600)
        with daemon:
            progress(f"importing {args.n:,} vectors")
            out["import"] = import_timed(daemon, shards)
            progress(f"imported: {out['import']}")
            start = time.perf_counter()
            out["index_settled"] = wait_idle(daemon, timeout=86400)
            out["settle_after_import_s"] = round(time.perf_counter() - start, 1)
            out["import_log"] = log_facts(daemon)
            out["import_peak_rss"] = rss(daemon._proc.pid)  # type: ignore[union-attr]
        keep_log(daemon, args.label, "import")
        progress("restart on the saved base")
        out["restart"] = started(daemon)
        keep_log(daemon, args.label, "restart")
        progress(f"restarted: {out['restart']['to_health_s']} s")
        if args.recent:
            folder = recent_shards(args.recent, args.n, dim, model_id, Path(tmp) / "recent")
            out["recent_import"] = import_timed(daemon, folder)
            removed = daemon.get("/remove?image=" + urllib.request.quote("/imgsearch-scale/f0001"))
            out["removed"] = removed.get("removed")
            daemon._proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            daemon._proc.wait()  # type: ignore[union-attr]
            daemon._proc = None
            progress("killed; restart to replay")
            out["replay_restart"] = started(daemon)
            keep_log(daemon, args.label, "replay")
            progress(f"replay restart: {out['replay_restart']['to_health_s']} s")
        daemon.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--recent", type=int, default=0, help="rows to replay after a kill -9")
    parser.add_argument("--tmp", default=None, help="where the data dir goes (default: $TMPDIR)")
    parser.add_argument("--label", default="", help="a note stored with the result")
    args = parser.parse_args()
    out = {"label": args.label, **run(args)}
    record(out, "restart")


if __name__ == "__main__":
    main()
