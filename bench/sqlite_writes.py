"""What a bulk import's SQLite writes cost a row: the store's upsert in 20,000-row batches.

    python bench/sqlite_writes.py --rows 1000000 --rounds 2

For each variant a fresh database (the current schema) under --tmp is filled with --rows rows
as bench/scale.py's shards make them (paths in folders of 10,000, a 512-d float16 vector, no
sha256: the import's stand-in) through `Images.upsert`, the call the import makes for each
batch; the variants alternate, --rounds times. "full sha256 index" is the schema as it is,
every row's hash indexed (the stand-ins of hashless imports too); "known hashes only" replaces
that index with a partial one that leaves the stand-ins out (checked 2026-12-04 and not
adopted: see docs/BENCHMARKS.md). Reports CPU and wall microseconds a row over the last half
of the rows (the database past its first pages). Appends one JSON line to
bench/out/sqlite_writes.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cpu_model, progress, record  # noqa: E402

BATCH = 20_000
DIM = 512
PARTIAL_INDEX = (
    "DROP INDEX images_sha256",
    "CREATE INDEX images_sha256 ON images(sha256) WHERE substr(sha256, 1, 8) <> 'unknown:'",
)
VARIANTS = {"full sha256 index": (), "known hashes only": PARTIAL_INDEX}


def fill(folder: Path, rows: int, statements: tuple[str, ...]) -> dict[str, float]:
    """Write `rows` rows into a new store in `folder`; us a row (CPU, wall) past the middle."""
    from imgsearch.store import UNKNOWN_SHA256, FileFacts, NewImage, Store

    store = Store(folder / "db.sqlite3")
    with store.db.write() as conn:
        for statement in statements:
            conn.execute(statement)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cpu = wall = 0.0
    for b in range(rows // BATCH):
        items = []
        for j in range(BATCH):
            path = f"/imgsearch-scale/f{(b * BATCH + j) // 10_000:04d}/{j % 10_000:05d}.jpg"
            facts = FileFacts(path, 1000, 1, f"{UNKNOWN_SHA256}{path}", 64, 64)
            items.append(NewImage(facts, vectors[j]))
        c0, t0 = time.process_time(), time.perf_counter()
        store.images.upsert(items)
        if b >= rows // BATCH // 2:
            cpu += time.process_time() - c0
            wall += time.perf_counter() - t0
    store.close()
    counted = rows - rows // BATCH // 2 * BATCH
    return {"cpu_us": round(cpu / counted * 1e6, 2), "wall_us": round(wall / counted * 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="where the databases go (default: $TMPDIR)")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "bench": "sqlite_writes", "cpu": cpu_model(), "load": os.getloadavg(), "rows": args.rows,
    }  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, statements in VARIANTS.items():
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                runs[name].append(fill(Path(tmp), args.rows, statements))
            progress(f"{name}: {runs[name][-1]}")
    result["runs"] = runs
    base, new = (min(r["cpu_us"] for r in runs[name]) for name in VARIANTS)
    result["cpu_ratio"] = round(base / new, 3)
    result["load_after"] = os.getloadavg()
    record(result, "sqlite_writes")


if __name__ == "__main__":
    main()
