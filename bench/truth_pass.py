"""What a tuning's ground-truth pass costs a row: the store's vectors streamed from SQLite and
compared with the tuning's queries, as `index.build.retune` does after an import.

    python bench/truth_pass.py --data DATA_DIR --rows 1000000
    python bench/truth_pass.py --data DATA_DIR --rows 1000000 --trees /tmp/before . --rounds 2

Opens DATA_DIR's database read-only and, for each --trees checkout in turn (--rounds times),
runs in a fresh process with that tree's code: `Store.vectors()` chunks (the daemon's chunk
size) of the first --rows present rows, each compared with 200 unit queries by
`hits.exact_among` and merged into a running best 11 (`hits.merge`), with torch
loaded and its threads as the daemon sets them (half the cores). Prints wall and CPU µs a row
and a checksum of the answers (the trees must agree); the CPU model and load; appends one
JSON line a run to bench/out/truth_pass.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402

CHILD = r"""
import json, os, sqlite3, sys, time
import numpy as np, torch
sys.path.insert(0, os.getcwd())
from imgsearch.index.hits import exact_among, merge
from imgsearch.store.images import vector_chunks
torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
db, rows, queries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
q = np.random.default_rng(0).standard_normal((queries, 512)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
cur = conn.execute(
    "SELECT id, vector FROM images WHERE 1 AND +missing=0 ORDER BY id LIMIT ?", (rows,)
)
best = (np.full((queries, 0), -np.inf, np.float32), np.zeros((queries, 0), np.int64))
wall, cpu = time.perf_counter(), time.process_time()
for chunk in vector_chunks(cur, 10_000, 512):
    best = merge([best, exact_among(q, 11, chunk.ids, chunk.vectors)], 11)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall_us_a_row": 1e6 * wall / rows, "cpu_us_a_row": 1e6 * cpu / rows,
                  "checksum": int(best[1].sum())}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--trees", type=Path, nargs="+", default=[Path(".")])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    db = (args.data / "imgsearch.sqlite3").resolve()
    progress(f"{cpu_model()}, load {os.getloadavg()}; {args.rows} rows of {db}")
    for round_ in range(args.rounds):
        for tree in args.trees:
            cmd = [sys.executable, "-c", CHILD, str(db), str(args.rows), str(args.queries)]
            out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result = {"cpu": cpu_model(), "load": os.getloadavg(), "tree": str(tree.resolve()),
                      "round": round_, "rows": args.rows, **result}  # fmt: skip
            progress(
                f"{tree}: {result['wall_us_a_row']:.2f} us a row wall, "
                f"{result['cpu_us_a_row']:.2f} CPU; checksum {result['checksum']}"
            )
            record(result, "truth_pass")


if __name__ == "__main__":
    main()
