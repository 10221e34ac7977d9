"""What a folder's rows cost SQLite to delete or mark missing, and the per-row triggers' share.

    python bench/delete_cost.py --db DATA_DIR/imgsearch.sqlite3 --first 151

On a library bench/scale.py --keep left (its rows in folders of 10,000 under
/imgsearch-scale/fNNNN), each step is timed inside a write transaction that is then rolled
back, so nothing is changed: a folder's `DELETE` as the schema has it, the same with schema
v8's two per-row delete triggers (the counter in `meta`, the deletions log) created for it,
then without the `sha256` and `generation` indexes; and a folder's `UPDATE ... missing=1` in
1,000-id chunks, as `Images.set_missing` runs it, with its two triggers and without them. Each
step takes a folder of its own from --first on, --rounds times. Prints the CPU model and
load; appends one JSON line to bench/out/delete_cost.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from scale import ROOT  # noqa: E402

# Schema v8's delete triggers (imgsearch/store/migrations.py), dropped by v9.
V8_DELETE_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS images_counted_delete AFTER DELETE ON images BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) - 1
        WHERE key = CASE OLD.missing WHEN 0 THEN 'present' ELSE 'missing' END;
    END""",
    """CREATE TRIGGER IF NOT EXISTS images_logged_delete AFTER DELETE ON images BEGIN
        INSERT OR IGNORE INTO deletions(generation, id)
        VALUES ((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), OLD.id);
    END""",
)
NO_MISSING_TRIGGERS = (
    "DROP TRIGGER IF EXISTS images_counted_missing",
    "DROP TRIGGER IF EXISTS images_logged_missing",
)


def timed(db: sqlite3.Connection, folder: int, missing: bool, prep: Sequence[str]) -> float:
    """ms of one folder's delete (or flip to missing), in a transaction rolled back."""
    below = f"{ROOT}/f{folder:04d}/"
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in prep:
            db.execute(statement)
        if not missing:
            start = time.perf_counter()
            where = "path = ? OR (path >= ? AND path < ?)"
            db.execute(f"DELETE FROM images WHERE {where}", (below[:-1], below, below[:-1] + "0"))
            return (time.perf_counter() - start) * 1000
        query = "SELECT id FROM images WHERE path >= ? AND path < ?"
        ids = [r[0] for r in db.execute(query, (below, below[:-1] + "0"))]
        start = time.perf_counter()
        for at in range(0, len(ids), 1000):
            chunk = ids[at : at + 1000]
            marks = ",".join("?" * len(chunk))
            db.execute(
                "UPDATE images SET missing=1, generation=generation+1, updated_at=? WHERE id IN"
                f" ({marks}) AND missing=0 RETURNING id",
                (time.time(), *chunk),
            ).fetchall()
        return (time.perf_counter() - start) * 1000
    finally:
        db.execute("ROLLBACK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--first", type=int, required=True, help="the first folder's number")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")  # as the daemon's connections (the metadata cascade)
    steps: dict[str, tuple[bool, Sequence[str]]] = {
        "delete": (False, ()),
        "delete, v8 triggers": (False, V8_DELETE_TRIGGERS),
        "delete, no sha256 index": (False, ("DROP INDEX images_sha256",)),
        "delete, no generation index": (False, ("DROP INDEX images_generation",)),
        "mark missing": (True, ()),
        "mark missing, no triggers": (True, NO_MISSING_TRIGGERS),
    }
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg()[0], "db": str(args.db)}
    folder = args.first
    for _ in range(args.rounds):
        for name, (missing, prep) in steps.items():
            ms = timed(db, folder, missing, prep)
            out.setdefault(name, []).append(round(ms, 1))
            progress(f"{name}: f{folder:04d} {ms:.1f} ms")
            folder += 1
    db.close()
    record(out, "delete_cost")


if __name__ == "__main__":
    main()
