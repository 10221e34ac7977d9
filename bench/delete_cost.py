"""What a folder's rows cost SQLite to delete or mark missing, and the per-row triggers' share.

    python bench/delete_cost.py --db DATA_DIR/imgsearch.sqlite3 --first 151
    python bench/delete_cost.py --db DATA_DIR/imgsearch.sqlite3 --first 151 --rounds 28

On a library bench/scale.py --keep left (its rows in folders of 10,000 under
/imgsearch-scale/fNNNN), each step is timed inside a write transaction that is then rolled
back, so nothing is changed, each from reading the folder's ids: a folder deleted as
`Images.remove_tree` does it (the `DELETE`, then `images.forget` logs and counts the rows, a
statement each: schema v9), the same with schema v8's two per-row delete triggers doing that
instead, then without the `sha256` and `generation` indexes; and a folder marked missing as
`Images.set_missing` does it (`images.flip`: `UPDATE ... missing=1` in 1,000-id chunks, then the
log and the counters: schema v10), as schema v9 did it (the same updates, two triggers a row),
and the bare updates. Round r takes folder --first + r and times every step on it, each
round starting one step further along the list, each step right after an untimed bare one of
its kind (the folder's pages in the page cache, SQLite's cache as that leaves it: this times
SQLite's work, not the disk, nor what the step before left). Prints the CPU model and load, each
step's median over --rounds, and the median of its ratio to the store's own way (`delete` or
`mark missing`) in the same round; appends one JSON line to bench/out/delete_cost.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, progress, record  # noqa: E402
from scale import ROOT  # noqa: E402

from imgsearch.store.gone import flip, forget  # noqa: E402
from imgsearch.store.meta import current  # noqa: E402

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
# Schema v9's flip triggers (dropped by v10).
V9_MISSING_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS images_counted_missing AFTER UPDATE OF missing ON images
    WHEN OLD.missing <> NEW.missing BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) + (1 - 2 * NEW.missing)
        WHERE key = 'present';
        UPDATE meta SET value = CAST(value AS INTEGER) - (1 - 2 * NEW.missing)
        WHERE key = 'missing';
    END""",
    """CREATE TRIGGER IF NOT EXISTS images_logged_missing AFTER UPDATE OF missing ON images
    WHEN NEW.missing = 1 AND OLD.missing = 0 BEGIN
        INSERT OR IGNORE INTO deletions(generation, id) VALUES (NEW.generation, OLD.id);
    END""",
)


def timed(
    db: sqlite3.Connection, folder: int, missing: bool, prep: Sequence[str], kept: bool = False
) -> float:
    """ms of one folder's delete (or flip to missing), from reading its rows' ids, in a
    transaction rolled back. `kept`: the rows logged and counted as the store does it
    (`images.forget` after the delete, `images.flip`), not by triggers."""
    below = f"{ROOT}/f{folder:04d}/"
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in prep:
            db.execute(statement)
        start = time.perf_counter()
        generation = current(db) + 1
        if not missing:
            where = "path = ? OR (path >= ? AND path < ?)"
            args = (below[:-1], below, below[:-1] + "0")
            found = db.execute(f"SELECT id, missing FROM images WHERE {where}", args).fetchall()
            db.execute(f"DELETE FROM images WHERE {where}", args)
            if kept:
                forget(db, found, generation)
            return (time.perf_counter() - start) * 1000
        query = "SELECT id FROM images WHERE path >= ? AND path < ?"
        ids = [r[0] for r in db.execute(query, (below, below[:-1] + "0"))]
        if kept:
            flip(db, ids, True, generation, time.time())
            return (time.perf_counter() - start) * 1000
        for at in range(0, len(ids), 1000):
            chunk = ids[at : at + 1000]
            marks = ",".join("?" * len(chunk))
            db.execute(
                "UPDATE images SET missing=1, generation=?, updated_at=? WHERE id IN"
                f" ({marks}) AND missing=0 RETURNING id",
                (generation, time.time(), *chunk),
            ).fetchall()
        return (time.perf_counter() - start) * 1000
    finally:
        db.execute("ROLLBACK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--first", type=int, required=True, help="the first folder's number")
    parser.add_argument("--rounds", type=int, default=14)
    args = parser.parse_args()
    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")  # as the daemon's connections (the metadata cascade)
    steps: dict[str, tuple[bool, Sequence[str], bool]] = {
        "delete": (False, (), True),
        "delete, v8 triggers": (False, V8_DELETE_TRIGGERS, False),
        "delete, no sha256 index": (False, ("DROP INDEX images_sha256",), True),
        "delete, no generation index": (False, ("DROP INDEX images_generation",), True),
        "mark missing": (True, NO_MISSING_TRIGGERS, True),
        "mark missing, v9 triggers": (True, V9_MISSING_TRIGGERS, False),
        "mark missing, neither logged nor counted": (True, NO_MISSING_TRIGGERS, False),
    }
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg()[0], "db": str(args.db)}
    names = list(steps)
    for turn in range(args.rounds):
        folder = args.first + turn
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            missing, prep, kept = steps[name]
            # Untimed first, the same kind of step as it: each step starts from the same state
            # (a rolled-back DROP INDEX leaves SQLite's page cache empty for the step after it).
            timed(db, folder, missing, ())
            ms = timed(db, folder, missing, prep, kept)
            out.setdefault(name, []).append(round(ms, 1))
            progress(f"{name}: f{folder:04d} {ms:.1f} ms")
    out["median"] = {name: statistics.median(out[name]) for name in names}
    # Each step against the store's own way on the same folder in the same round (paired:
    # the machine's drift between rounds cancels out).
    out["median_ratio"] = {
        name: round(statistics.median(a / b for a, b in zip(out[name], out[base], strict=True)), 3)
        for name in names
        for base in ["mark missing" if steps[name][0] else "delete"]
    }
    db.close()
    record(out, "delete_cost")


if __name__ == "__main__":
    main()
