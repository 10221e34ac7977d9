"""Writing a batch of images by path: one lookup per CHUNK paths, one executemany for the
updates and multi-row INSERTs for the new rows (the ids of consecutive AUTOINCREMENT inserts
are computed, not read back), and the 'present' counter raised once (schema v7 dropped its
per-row trigger).

The new rows go in as many to a statement as SQLite's bound-parameter limit allows (2,978 in
SQLite's default build), not by executemany: executemany steps its statement once a row, and
each step lets go of the GIL; with a busy Python thread beside it (an import's reader) every
row then waits for the GIL to come back, up to the switch interval (bench/sqlite_writes.py
--busy).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from .db import chunked

if TYPE_CHECKING:
    from .images import NewImage

# Vectors are written as little-endian float16: half the bytes, cosine to float32 > 0.9999.
VECTOR_DTYPE = "<f2"
# Bytes that `stacked` copies with one join: a join holds the GIL until it is done (20,000
# rows of 512-d at once: other threads paused 18-22 ms, an import's writer stalling every
# request's thread; ~1 MB at a time: 2.2-2.7 ms; bench/gil_holds.py --what vectors).
JOIN_BYTES = 1 << 20

INSERT = (
    "INSERT INTO images(size, mtime_ns, sha256, width, height, vector, generation, updated_at,"
    " source, added_at, path) VALUES "
)
COLUMNS = 11  # the values of a row in INSERT
ROW = "(" + ",".join("?" * COLUMNS) + ")"
VARIABLES = 999  # SQLite's bound-parameter limit where the connection cannot tell (before 3.11)
# a re-add of a downloaded file without a URL keeps its source
UPDATE = (
    "UPDATE images SET size=?, mtime_ns=?, sha256=?, width=?, height=?, vector=?, generation=?,"
    " updated_at=?, source=coalesce(?, source), missing=0 WHERE id=?"
)


def upsert_many(
    conn: sqlite3.Connection, items: Sequence[NewImage], generation: int, now: float
) -> tuple[list[int], list[int]]:
    """Write `items` (paths distinct or not); return every item's id, and the updated ones."""
    paths = [item.facts.path for item in items]
    known: dict[str, int] = {}
    for chunk, marks in chunked(paths):
        query = f"SELECT path, id FROM images WHERE path IN ({marks})"
        known.update(conn.execute(query, chunk).fetchall())
    if len(set(paths)) != len(paths):  # the same path twice: the later row replaces the earlier
        return _upsert_each(conn, items, generation, now, known)
    blobs = _blobs(items)
    new = [n for n, p in enumerate(paths) if p not in known]
    old = [n for n, p in enumerate(paths) if p in known]
    conn.executemany(
        UPDATE, [(*_values(items[n], blobs[n], generation, now), known[paths[n]]) for n in old]
    )
    if new:
        before = _sequence(conn)
        rows = [(*_values(items[n], blobs[n], generation, now), now, paths[n]) for n in new]
        insert_rows(conn, rows)
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        if last - before == len(new):  # AUTOINCREMENT under the one writer: consecutive ids
            known.update(zip((paths[n] for n in new), range(before + 1, last + 1), strict=True))
        else:  # never seen; read them back rather than guess
            for chunk, marks in chunked([paths[n] for n in new]):
                query = f"SELECT path, id FROM images WHERE path IN ({marks})"
                known.update(conn.execute(query, chunk).fetchall())
        conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key='present'", (len(new),)
        )
    return [int(known[p]) for p in paths], [int(known[paths[n]]) for n in old]


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert `rows` (INSERT's values each, in order) as many to a statement as can be bound."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if hasattr(conn, "getlimit") else 0
    per = max(1, (limit or VARIABLES) // COLUMNS)
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        conn.execute(insert_sql(len(part)), list(chain.from_iterable(part)))


@lru_cache(maxsize=8)
def insert_sql(rows: int) -> str:
    """INSERT of `rows` rows (the same text for the same count: SQLite's statement cache)."""
    return INSERT + ",".join([ROW] * rows)


def _sequence(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='images'").fetchone()
    return int(row[0]) if row else 0


def stacked(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Vectors of one length as one float32 matrix [n, dim], copied through bytes joins of
    JOIN_BYTES each.

    np.array of a list of rows copies each row by itself and lets go of the GIL for every row
    over 500 values (a 512-d vector); with a busy Python thread beside (an import's reader)
    each row then waits up to the switch interval to take it back: 20,000 rows took 1.1-3.2 s
    so, 0.08 s joined (ad hoc; the whole write: bench/sqlite_writes.py --busy). One join of
    them all held the GIL as long as it copied (JOIN_BYTES)."""
    rows = [np.ascontiguousarray(v, np.float32).reshape(-1) for v in vectors]  # float32: views
    if not rows:
        return np.zeros((0, 0), np.float32)
    dim = len(rows[0])
    if any(len(r) != dim for r in rows):
        raise ValueError("vectors of different lengths")
    out = np.empty((len(rows), dim), np.float32)
    step = max(1, JOIN_BYTES // max(1, 4 * dim))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        joined = b"".join([r.data for r in part])
        out[start : start + len(part)] = np.frombuffer(joined, np.float32).reshape(len(part), dim)
    return out


def _blobs(items: Sequence[NewImage]) -> list[bytes]:
    """Each item's vector as a VECTOR_DTYPE blob (one conversion for the batch)."""
    if not items:
        return []
    half = stacked([i.vector for i in items]).astype(VECTOR_DTYPE)
    raw = half.tobytes()
    step = len(raw) // len(items)
    return [raw[n * step : (n + 1) * step] for n in range(len(items))]


def _values(item: NewImage, blob: bytes, generation: int, now: float) -> tuple[object, ...]:
    f = item.facts
    return (f.size, f.mtime_ns, f.sha256, f.width, f.height, blob, generation, now, f.source)


def _upsert_each(
    conn: sqlite3.Connection,
    items: Sequence[NewImage],
    generation: int,
    now: float,
    known: dict[str, int],
) -> tuple[list[int], list[int]]:
    """Row by row, for a batch naming a path more than once."""
    ids: list[int] = []
    updated: list[int] = []
    for item, blob in zip(items, _blobs(items), strict=True):
        values = _values(item, blob, generation, now)
        id_ = known.get(item.facts.path)
        if id_ is None:
            cur = conn.execute(insert_sql(1), (*values, now, item.facts.path))
            id_ = known[item.facts.path] = int(cur.lastrowid or 0)
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='present'")
        else:
            conn.execute(UPDATE, (*values, id_))
            updated.append(id_)
        ids.append(id_)
    return ids, updated
