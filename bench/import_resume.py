"""How long a resumed import takes to reach its first unread row of a big shard.

    python bench/import_resume.py --rows 500000 --dim 128 --groups 25 --start 480000
    python bench/import_resume.py ... --tree /tmp/before      # another checkout, in turns

Writes one shard (--rows random --dim float32 vectors in --groups row groups) under --work,
then, for each tree, times `read_batches(info, start_row=--start)` up to its first batch, in
a fresh interpreter each round (--rounds, trees in turns). Prints the CPU model and load;
appends one JSON line to bench/out/import_resume.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, cpu_model, record  # noqa: E402

FIRST_BATCH = """
import json, sys, time
from pathlib import Path
from imgsearch.bulk.format import read_batches, shard_info
info = shard_info(Path(sys.argv[1]))
start = time.perf_counter()
batch = next(read_batches(info, start_row=int(sys.argv[2])))
print(json.dumps({"first_batch_s": round(time.perf_counter() - start, 3), "row": batch.rows[0]}))
"""


def write(path: Path, rows: int, dim: int, groups: int) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from imgsearch.bulk.format import table_of, write_shard

    vectors = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    table = table_of("bench/model", dim, [f"/b/{i}.jpg" for i in range(rows)], vectors)
    write_shard(path, table, row_group_size=-(-rows // groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--groups", type=int, default=25)
    parser.add_argument("--start", type=int, default=480_000)
    parser.add_argument("--tree", type=Path, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()}")
    shard = args.work / f"resume-{args.rows}-{args.dim}-{args.groups}.parquet"
    if not shard.exists():
        write(shard, args.rows, args.dim, args.groups)
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for tree in [REPO_ROOT, *args.tree]:
            done = subprocess.run(
                [sys.executable, "-c", FIRST_BATCH, str(shard), str(args.start)],
                cwd=tree, capture_output=True, text=True, check=True,
            )  # fmt: skip
            got = json.loads(done.stdout.strip().splitlines()[-1])
            assert got["row"] == args.start, got
            results.setdefault(str(tree), []).append(got["first_batch_s"])
            print(f"  {tree}: {got['first_batch_s']} s to row {got['row']}")
    record({**vars(args), "tree": [str(t) for t in args.tree], "work": str(args.work),
            "results": results, "load": os.getloadavg()}, "import_resume")  # fmt: skip


if __name__ == "__main__":
    main()
