"""Writing a batch of images (store.Rows: columns) by path: one lookup per CHUNK paths, one
executemany for the updates and multi-row INSERTs for the new rows (the ids of consecutive
AUTOINCREMENT inserts are computed, not read back), and the counters moved once (new rows,
and stored rows marked missing, now present again: schema v7 and v10 dropped the per-row
triggers). Parameters are laid out from the columns, and the
float16 blobs cut from the vector matrix by numpy: no Python object or step a row beyond the
values SQLite binds.

The new rows go in by multi-row INSERTs of up to BIND_ROWS rows, not by executemany:
executemany steps its statement once a row, and each step lets go of the GIL; with a busy
Python thread beside it (an import's reader) every row then waits for the GIL to come back, up
to the switch interval (bench/sqlite_writes.py --busy). Not more rows a statement either:
binding its parameters holds the GIL throughout, and where SQLite allows 250,000 of them
(Debian's build) a whole 20,000-row import batch went in one statement that held it ~25 ms,
once a batch: every request on the event loop meanwhile waited that long (`/stats` p99 during
an import; bench/sqlite_writes.py --variants "one statement a batch" columns).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from .db import chunked
from .meta import add_counts
from .rows import JOIN_BYTES, Rows

# Vectors are written as little-endian float16: half the bytes, cosine to float32 > 0.9999.
VECTOR_DTYPE = "<f2"

INSERT = (
    "INSERT INTO images(size, mtime_ns, sha256, width, height, vector, generation, updated_at,"
    " source, added_at, path) VALUES "
)
COLUMNS = 11  # the values of a row in INSERT
ROW = "(" + ",".join("?" * COLUMNS) + ")"
VARIABLES = 999  # SQLite's bound-parameter limit where the connection cannot tell (before 3.11)
# Rows a multi-row INSERT binds at most (5,500 parameters, under a millisecond holding the
# GIL). 20,000-row batches go in as fast as in one statement each (9.8-10.1 against 9.7-9.8 us
# a row), and the longest hold of the GIL while they are written is 3.3-4.6 ms against
# 27.6-34.4 (bench/sqlite_writes.py --daemon --variants "one statement a batch" columns).
BIND_ROWS = 500
# a re-add of a downloaded file without a URL keeps its source
UPDATE = (
    "UPDATE images SET size=?, mtime_ns=?, sha256=?, width=?, height=?, vector=?, generation=?,"
    " updated_at=?, source=coalesce(?, source), missing=0 WHERE id=?"
)


def upsert_many(
    conn: sqlite3.Connection, rows: Rows, generation: int, now: float
) -> tuple[list[int], list[int]]:
    """Write `rows` (paths distinct or not); return every row's id, and the updated ones."""
    paths = rows.paths
    known: dict[str, int] = {}
    missing: set[int] = set()  # stored rows marked missing: an update makes them present
    for chunk, marks in chunked(paths):
        query = f"SELECT path, id, missing FROM images WHERE path IN ({marks})"
        for path, id_, gone in conn.execute(query, chunk):
            known[path] = id_
            if gone:
                missing.add(id_)
    if missing:  # (no trigger since schema v10: the counters move here)
        add_counts(conn, present=len(missing), missing=-len(missing))
    if len(set(paths)) != len(paths):  # the same path twice: the later row replaces the earlier
        return _upsert_each(conn, rows, generation, now, known)
    blobs = _blobs(rows.vectors)
    updated: list[int] = []
    if known:
        old = [n for n, p in enumerate(paths) if p in known]
        new = [n for n, p in enumerate(paths) if p not in known]
        done = rows.take(old)
        updated = [int(known[p]) for p in done.paths]
        values = _columns(done, [blobs[n] for n in old], generation, now)
        conn.executemany(UPDATE, zip(*values, updated, strict=True))
        rows, blobs = rows.take(new), [blobs[n] for n in new]
    if len(rows):
        before = _sequence(conn)
        insert_rows(conn, [*_columns(rows, blobs, generation, now), [now] * len(rows), rows.paths])
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        if last - before == len(rows):  # AUTOINCREMENT under the one writer: consecutive ids
            known.update(zip(rows.paths, range(before + 1, last + 1), strict=True))
        else:  # never seen; read them back rather than guess
            for chunk, marks in chunked(rows.paths):
                query = f"SELECT path, id FROM images WHERE path IN ({marks})"
                known.update(conn.execute(query, chunk).fetchall())
        add_counts(conn, present=len(rows))
    return [int(known[p]) for p in paths], updated


def insert_rows(conn: sqlite3.Connection, columns: Sequence[Sequence[object]]) -> None:
    """Insert rows given as INSERT's COLUMNS columns, BIND_ROWS to a statement (fewer where
    SQLite binds fewer parameters); each statement's parameters are laid out column by column
    (slice assignments, no tuple a row)."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if hasattr(conn, "getlimit") else 0
    per = max(1, min(BIND_ROWS, (limit or VARIABLES) // COLUMNS))
    count = len(columns[0])
    for start in range(0, count, per):
        size = min(per, count - start)
        flat: list[object] = [None] * (size * COLUMNS)
        for n, column in enumerate(columns):
            flat[n::COLUMNS] = column[start : start + size]
        conn.execute(insert_sql(size), flat)


@lru_cache(maxsize=8)
def insert_sql(rows: int) -> str:
    """INSERT of `rows` rows (the same text for the same count: SQLite's statement cache)."""
    return INSERT + ",".join([ROW] * rows)


def _sequence(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='images'").fetchone()
    return int(row[0]) if row else 0


def _blobs(vectors: np.ndarray) -> list[bytes]:
    """Each row of `vectors` as a VECTOR_DTYPE blob: one conversion for the batch, the blobs
    cut by numpy ~JOIN_BYTES at a time (a cut holds the GIL while it makes its bytes)."""
    if not len(vectors):
        return []
    half = _half(vectors)
    cells = half.view(np.dtype((np.void, half.shape[1] * half.itemsize))).reshape(-1)
    step = max(1, JOIN_BYTES // cells.itemsize)
    blobs: list[bytes] = []
    for start in range(0, len(cells), step):
        blobs += cells[start : start + step].tolist()
    return blobs


def _columns(rows: Rows, blobs: list[bytes], generation: int, now: float) -> list[Sequence[object]]:
    """The first nine columns of INSERT (UPDATE's SET values) for `rows`."""
    n = len(rows)
    return [
        rows.sizes,
        rows.mtimes,
        rows.sha256,
        rows.widths,
        rows.heights,
        blobs,
        [generation] * n,
        [now] * n,
        rows.sources,
    ]


def _upsert_each(
    conn: sqlite3.Connection,
    rows: Rows,
    generation: int,
    now: float,
    known: dict[str, int],
) -> tuple[list[int], list[int]]:
    """Row by row, for a batch naming a path more than once."""
    ids: list[int] = []
    updated: list[int] = []
    values = zip(*_columns(rows, _blobs(rows.vectors), generation, now), strict=True)
    for path, row in zip(rows.paths, values, strict=True):
        id_ = known.get(path)
        if id_ is None:
            cur = conn.execute(insert_sql(1), (*row, now, path))
            id_ = known[path] = int(cur.lastrowid or 0)
            add_counts(conn, present=1)
        else:
            conn.execute(UPDATE, (*row, id_))
            updated.append(id_)
        ids.append(id_)
    return ids, updated


def _half(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as VECTOR_DTYPE, converted by torch where the daemon has it loaded: 5x
    quicker than numpy's float16 cast (0.29 against 1.5 us a 512-d row) and without the GIL;
    numpy's cast elsewhere (a process that only writes the store does not load torch for it;
    one whose other thread is importing it right now), and for other dtypes or read-only
    arrays (torch warns about those)."""
    x = np.asarray(vectors)
    torch = _loaded("torch")
    if torch is None or x.dtype != np.float32 or not x.flags.writeable:
        return np.ascontiguousarray(x, dtype=VECTOR_DTYPE)
    return np.asarray(torch.from_numpy(np.ascontiguousarray(x)).half().numpy())


def _loaded(name: str) -> Any:
    """The module `name` if this process has finished importing it, else None (while another
    thread imports it, sys.modules holds it half made: importlib marks its spec so)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is None or spec is None or getattr(spec, "_initializing", False):
        return None
    return module
