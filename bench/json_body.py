"""What a search by vector costs before and after the index: its JSON body parsed and checked,
in process and end to end over HTTP, for one or more source trees in turns.

    python bench/json_body.py                              # this tree
    git worktree add --detach /tmp/before HEAD~1
    python bench/json_body.py --trees /tmp/before . --rounds 3

In process (this tree): the median µs of parsing a `{"vector": [...], "limit": 10}` body of
512 and 1,280 numbers (the models' dimensions) by the standard `json` module and by
`imgsearch.web.parsing.loads`, and of checking its numbers (`web.search._vector`).

End to end: each tree serves the same small data dir (ViT-B-32 with random weights, 20 photos
added, precompute off, so the index search is ~0.2 ms and the rest is the request's path) in
turns, A B A B ...; one client on a kept-alive connection times `GET /health` (the HTTP floor)
and `POST /search {"vector": [...], "limit": 10}` with random vectors, after a warm-up. Prints
one JSON object and appends it to bench/out/json_body.jsonl.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, generate_jpegs, percentiles, record  # noqa: E402
from scale import machine  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from imgsearch.web.parsing import loads  # noqa: E402
from imgsearch.web.search import _vector  # noqa: E402

FLAGS = ["--model", "ViT-B-32", "--pretrained", "none", "--workers", "1", "--precompute", "off"]
DIM = 512  # the daemon's model (ViT-B-32)
BODIES = 50  # distinct query bodies, used in turn


def body(dim: int, seed: int) -> bytes:
    """A search's JSON body as a client sends an embedding: float32 values, written by json."""
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32).tolist()
    return json.dumps({"vector": vector, "limit": 10}).encode()


def median_us(work: Any, repeat: int = 3000) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def in_process() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dim in (512, 1280):
        text = body(dim, 0).decode()
        vector = loads(text)["vector"]
        out[str(dim)] = {
            "json_loads_us": median_us(lambda t=text: json.loads(t)),
            "parsing_loads_us": median_us(lambda t=text: loads(t)),
            "checked_us": median_us(lambda v=vector: _vector(v)),
        }
    return out


def timed(conn: http.client.HTTPConnection, method: str, path: str, data: bytes | None) -> float:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    start = time.perf_counter()
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        raise SystemExit(f"{method} {path}: {response.status} {answer[:200]!r}")
    return (time.perf_counter() - start) * 1000


def one_round(tree: Path, data_dir: Path, requests: int) -> dict[str, Any]:
    bodies = [body(DIM, seed) for seed in range(BODIES)]
    with Daemon(FLAGS, data_dir, tree=tree) as daemon:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port)
        for i in range(200):  # warm-up: the model's first calls, the connection
            timed(conn, "POST", "/search", bodies[i % BODIES])
        health = [timed(conn, "GET", "/health", None) for _ in range(requests)]
        search = [timed(conn, "POST", "/search", bodies[i % BODIES]) for i in range(requests)]
        conn.close()
    return {"health_ms": percentiles(health, (50, 90)), "search_ms": percentiles(search, (50, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", nargs="+", default=[str(REPO_ROOT)])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="of each kind, a round")
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees]
    out: dict[str, Any] = {"machine": machine(), "in_process": in_process()}
    runs: dict[str, list[dict[str, Any]]] = {str(tree): [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="imgsearch-json-body-") as tmp:
        data_dir = Path(tmp) / "data"
        folder = generate_jpegs(20, size=(1024, 768), quality=90, seed=7)
        with Daemon(FLAGS, data_dir, tree=trees[0]) as daemon:
            daemon.get("/add?image=" + urllib.parse.quote(str(folder)))
        for r in range(args.rounds):
            for tree in trees:
                run = one_round(tree, data_dir, args.requests)
                runs[str(tree)].append(run)
                print(f"round {r + 1}, {tree}: {run}", file=sys.stderr, flush=True)
    out["trees"] = {
        tree: {
            "search_p50_ms_median": statistics.median(r["search_ms"]["p50"] for r in rs),
            "health_p50_ms_median": statistics.median(r["health_ms"]["p50"] for r in rs),
            "runs": rs,
        }
        for tree, rs in runs.items()
    }
    record(out, "json_body")


if __name__ == "__main__":
    main()
