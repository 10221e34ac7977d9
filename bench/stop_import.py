"""Stopping a daemon while it imports: SIGTERM to exit, at several points of one import.

    python bench/stop_import.py --n 1000000 --model efficientnet-lite0 --tmp /work/big
    python bench/stop_import.py --n 1000000 --dist spectral --every 20 60 120 --tmp /work/big

A daemon (bench/scale.py's flags) starts on an empty data dir and is given bench/scale.py's
cached shards for N with `POST /import {"wait": false}`. After each of the --every delays (wall
seconds since that daemon's /health) it is sent SIGTERM; the time to exit is measured, with
what it was doing then (/stats: the index's state and kind, rows the import had written).
It is then started again, resumes the import by itself, and the next delay runs. At the end
the last daemon is left to finish the import, and the library must hold N rows (none lost,
none twice). Prints one JSON object and appends it to bench/out/stop_import.jsonl.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Daemon, progress, record  # noqa: E402
from scale import (  # noqa: E402
    DISTRIBUTIONS,
    MODELS,
    Vectors,
    daemon_flags,
    machine,
    post_json,
    write_shards,
)


def doing(daemon: Daemon, job: str) -> dict[str, Any]:
    """What the daemon is at: the index's state and kind, and the import's rows written."""
    stats = daemon.get("/stats", timeout=30)
    index = stats["index"]
    found = daemon.get(f"/import/{job}", timeout=30)
    return {
        "index_state": index["state"], "factory": index["factory"], "vectors": index["vectors"],
        "imported": found["imported"], "import_state": found["state"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--model", choices=tuple(MODELS), default="ViT-B-32")
    parser.add_argument("--dist", choices=DISTRIBUTIONS, default="clustered")
    parser.add_argument("--every", type=float, nargs="+", default=[15.0, 60.0, 120.0, 240.0])
    parser.add_argument("--tmp", type=Path, default=None, help="where the data dir goes")
    args = parser.parse_args()
    _, dim = MODELS[args.model]
    out: dict[str, Any] = {"n": args.n, "dim": dim, "dist": args.dist, **machine(), "stops": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        daemon = Daemon(daemon_flags(args.model), Path(tmp) / "data", start_timeout=600)
        daemon.start()
        model_id = daemon.get("/stats")["model"]
        shards, _ = write_shards(Vectors(args.n, dim, args.dist), model_id)
        job, _ = post_json(daemon.url + "/import", {"dir": str(shards), "wait": False})
        for delay in args.every:
            time.sleep(delay)
            at = doing(daemon, job["id"])
            proc = daemon._proc
            assert proc is not None
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(600)
            at.update(after_s=delay, exit_s=time.perf_counter() - start, exit_code=code)
            daemon._proc = None
            kept = daemon.log_path.with_name(f"{daemon.log_path.name}.{len(out['stops'])}")
            daemon.log_path.rename(kept)  # (each start writes its log afresh)
            at["log_tail"] = kept.read_text(errors="replace").splitlines()[-8:]
            progress(f"stopped: {at}")
            out["stops"].append(at)
            started = time.perf_counter()
            daemon.start()
            out["stops"][-1]["restart_s"] = time.perf_counter() - started
        progress("letting the import finish")
        while (found := daemon.get(f"/import/{job['id']}"))["state"] in ("queued", "running"):
            time.sleep(2)
        out["final"] = {"import_state": found["state"], "imported": found["imported"]}
        out["images"] = daemon.get("/stats")["images"]
        daemon.stop()
        if out["images"] != args.n:
            raise SystemExit(f"the library holds {out['images']} images, not {args.n}")
    record(out, "stop_import")


if __name__ == "__main__":
    main()
