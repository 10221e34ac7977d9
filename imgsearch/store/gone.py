"""What taking rows out of the library leaves to do inside the writing transaction: their ids
logged in `deletions` at the write's generation (the next start's replay reads them) and the
counters moved. A statement each, not a trigger a row (schema v9 and v10 dropped those)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from .db import CHUNK, chunked
from .meta import add_counts


def forget(conn: sqlite3.Connection, deleted: Sequence[tuple[int, int]], generation: int) -> None:
    """What the deletes of `deleted` rows ((id, missing) as they were) leave to do in the same
    transaction: log their ids in `deletions` at `generation`, and take them off the counters.
    A statement each, not a trigger a row (schema v9: those cost ~10 us a row, 0.1 s of a
    10,000-image folder's removal at 9M)."""
    log_gone(conn, [i for i, _ in deleted], generation)
    missing = sum(1 for _, m in deleted if m)
    add_counts(conn, present=missing - len(deleted), missing=-missing)


def flip(
    conn: sqlite3.Connection, ids: Sequence[int], missing: bool, generation: int, now: float
) -> list[int]:
    """Mark the images `ids` missing (or present again) inside the caller's write transaction,
    stamped with `generation`; return the ids that changed. Their counters move, and ids
    marked missing are logged in `deletions` (for the next start's replay), a statement each:
    schema v10 dropped the triggers that did both a row (a 10,000-row flip at 9M took 1.14x
    as long with them, bench/delete_cost.py)."""
    changed: list[int] = []
    for chunk, marks in chunked([int(i) for i in ids]):
        rows = conn.execute(
            f"UPDATE images SET missing=?, generation=?, updated_at=? WHERE id IN ({marks})"
            " AND missing=? RETURNING id",
            (int(missing), generation, now, *chunk, int(not missing)),
        )
        changed += [int(r[0]) for r in rows.fetchall()]
    if missing:
        log_gone(conn, changed, generation)
    back = len(changed) * (-1 if missing else 1)  # rows from missing to present
    add_counts(conn, present=back, missing=-back)
    return changed


def log_gone(conn: sqlite3.Connection, ids: Sequence[int], generation: int) -> None:
    """Log `ids` as taken out of the library (deleted, or marked missing) at `generation`:
    CHUNK / 2 rows a statement, not executemany's step a row."""
    for chunk, _ in chunked(sorted(int(i) for i in ids), CHUNK // 2):
        values = ",".join(["(?, ?)"] * len(chunk))
        flat = [v for i in chunk for v in (generation, i)]
        conn.execute(f"INSERT OR IGNORE INTO deletions(generation, id) VALUES {values}", flat)
