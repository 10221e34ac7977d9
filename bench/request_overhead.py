"""What a search by vector costs beyond the index: HTTP, JSON, the handler, on a tiny library.

    python bench/request_overhead.py
    python bench/request_overhead.py --tree /tmp/before --rounds 3   # in turns with a checkout

A daemon (ViT-B-32 with random weights: 512-d, one worker) is started on a new data dir
holding 5 photos (scikit-image's), so the index's own work is next to nothing; then
`POST /search {"vector": [...], "limit": 10}` is sent --searches times on one kept-alive
connection and the p50 / p99 latency in ms is taken (the client's own JSON included: the body
is encoded once). With --tree, each round runs that checkout's daemon and then this one's, in
turns. Prints the CPU model and load; appends one JSON line to bench/out/request_overhead.jsonl.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, cpu_model, percentiles, record  # noqa: E402
from scale import daemon_flags  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def one(tree: Path, searches: int) -> dict[str, Any]:
    from PIL import Image
    from skimage import data as sk

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for name in PHOTOS:
            Image.fromarray(getattr(sk, name)()).convert("RGB").save(folder / f"{name}.jpg")
        daemon = Daemon(daemon_flags("ViT-B-32"), Path(tmp) / "data", tree=tree).start()
        try:
            urllib.request.urlopen(f"{daemon.url}/add?image={folder}", timeout=300).read()
            vector = np.random.default_rng(0).standard_normal(512).tolist()
            body = json.dumps({"vector": vector, "limit": 10}).encode()
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port)
            took = []
            for _ in range(searches):
                start = time.perf_counter()
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                took.append((time.perf_counter() - start) * 1000)
                assert answer.status == 200, answer.status
        finally:
            daemon.stop()
    return {"tree": str(tree), "ms": percentiles(took)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, help="another checkout, run in turns with this one")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--searches", type=int, default=2000)
    args = parser.parse_args()
    trees = [args.tree, REPO_ROOT] if args.tree else [REPO_ROOT]
    runs = []
    for _ in range(args.rounds):
        for tree in trees:
            runs.append(one(tree, args.searches))
            print(runs[-1]["tree"], {k: round(v, 3) for k, v in runs[-1]["ms"].items()}, flush=True)
    record({"cpu": cpu_model(), "load": os.getloadavg(), "runs": runs}, "request_overhead")


if __name__ == "__main__":
    main()
