"""The `images` table: paths, file facts and vectors, the truth the FAISS index mirrors.

Every write is one transaction that bumps the generation counter and stamps the rows it writes,
so the index can tell how far behind it is; it returns a WriteResult (what changed, and that
generation), so no caller has to read the generation again after writing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .db import Database, chunked, tree
from .gone import flip, forget
from .meta import add_counts, bump, current
from .rows import NewImage, Rows, row_norms
from .upsert import VECTOR_DTYPE, upsert_many


@dataclass(frozen=True)
class FileState:
    """What the store knows of a path, enough to skip an unchanged file."""

    id: int
    size: int
    mtime_ns: int
    missing: bool = False


@dataclass(frozen=True)
class Located:
    """Where a stored image is, for results: its path, mtime and (if downloaded) source URL."""

    path: str
    mtime_ns: int
    source: str | None = None


@dataclass(frozen=True)
class StoredFile:
    """A stored image's path and content hash (for following moves and renames)."""

    id: int
    path: str
    sha256: str
    size: int
    mtime_ns: int
    missing: bool


@dataclass(frozen=True)
class ImageRow:
    """A stored image's facts, for listings (duplicates)."""

    id: int
    path: str
    sha256: str
    size: int
    mtime_ns: int
    width: int
    height: int
    source: str | None


IMAGE_ROW = "id, path, sha256, size, mtime_ns, width, height, source"
STORED_FILE = "id, path, sha256, size, mtime_ns, missing"
# A present image as an export writes it: IMAGE_ROW's columns and the vector as stored.
EXPORTED_ROW = f"{IMAGE_ROW}, vector"
# Rows of the deletions log dropped in one transaction (forget_deletions).
FORGET_CHUNK = 20_000
# The row counters (schema v5), kept by the writes here (`meta.add_counts`) since v10.
COUNTERS = "SELECT key, value FROM meta WHERE key IN ('present', 'missing')"


@dataclass(frozen=True)
class WriteResult:
    """What one image write transaction changed, and the generation it committed as.

    `ids`: rows inserted or replaced (vector or path written, or made present again);
    `updated`: those of `ids` that existed before; `removed`: rows deleted, replaced by a
    move, or taken out as missing. A write that changed nothing keeps the current generation.
    """

    ids: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    generation: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.ids or self.removed)


@dataclass(frozen=True)
class VectorChunk:
    ids: np.ndarray
    vectors: np.ndarray


def stored_file(row: tuple[int, str, str, int, int, int]) -> StoredFile:
    i, path, digest, size, mtime_ns, missing = row
    return StoredFile(i, path, digest, size, mtime_ns, bool(missing))


def vector_chunks(cursor: sqlite3.Cursor, size: int, dim: int) -> Iterator[VectorChunk]:
    """(id, vector BLOB) rows as chunks of ids and float32 vectors. Vectors are stored as
    float16 (VECTOR_DTYPE, 2 * dim bytes); rows of older versions hold float32 (4 * dim).
    With no model bound (dim 0) every row is one this version wrote: float16."""
    while rows := cursor.fetchmany(size):
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        blobs = [r[1] for r in rows]
        dim = dim or len(blobs[0]) // 2
        if all(len(b) == 2 * dim for b in blobs):  # one buffer, one conversion
            half = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(rows), dim)
            yield VectorChunk(ids, _unit(half.astype(np.float32)))
            continue
        vecs = [np.frombuffer(b, VECTOR_DTYPE if len(b) == 2 * dim else "<f4") for b in blobs]
        yield VectorChunk(ids, _unit(np.stack(vecs).astype(np.float32)))


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows back to unit length (float16 rounding leaves them off by ~1e-4)."""
    norms = row_norms(x)[:, None]
    np.divide(x, norms, out=x, where=norms > 0)
    return x


class Images:
    """The stored images: reads through this thread's connection, writes as one transaction
    that bumps the generation and returns a WriteResult."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._dims: int | None = None
        # (present, missing) as the last commit left them: kept in meta by the writes here
        # (schema v5; no triggers since v10), copied here after every commit, so count()
        # and missing() read no SQL and can answer on the event loop while a bulk import holds
        # the writer and the GIL.
        self._counts = (0, 0)
        db.after_commit(self._recount)

    def _recount(self, conn: sqlite3.Connection) -> None:
        rows = dict(conn.execute(COUNTERS).fetchall())
        self._counts = (int(rows.get("present", 0)), int(rows.get("missing", 0)))

    # -- reads --------------------------------------------------------------------------------

    def _dim(self) -> int:
        """The model's dimension, as bound in meta (tells float16 rows from float32 ones)."""
        if self._dims is None:
            row = self.db.reader().execute("SELECT value FROM meta WHERE key='dim'").fetchone()
            if row is None:
                return 0  # no model bound yet: no vectors either
            self._dims = int(row[0])
        return self._dims

    def count(self) -> int:
        """Images present (searchable); `missing()` counts the ones of vanished folders.
        Both are the counters the last commit left (no SQL: see __init__)."""
        return self._counts[0]

    def missing(self) -> int:
        return self._counts[1]

    def file_states(self, paths: Sequence[str]) -> dict[str, FileState]:
        """Known size/mtime of each path that is in the store."""
        found: dict[str, FileState] = {}
        for chunk, marks in chunked(paths):
            query = f"SELECT path, id, size, mtime_ns, missing FROM images WHERE path IN ({marks})"
            for path, id_, size, mtime_ns, missing in self.db.reader().execute(query, chunk):
                found[path] = FileState(id_, size, mtime_ns, bool(missing))
        return found

    def paths(self, ids: Sequence[int], present: bool = False) -> dict[int, Located]:
        """Path, mtime_ns and source of each id that is in the store (`present`: and whose
        file is not marked missing)."""
        found: dict[int, Located] = {}
        only = " AND missing = 0" if present else ""
        for chunk, marks in chunked([int(i) for i in ids]):
            query = f"SELECT id, path, mtime_ns, source FROM images WHERE id IN ({marks}){only}"
            for id_, path, mtime_ns, source in self.db.reader().execute(query, chunk):
                found[id_] = Located(path, mtime_ns, source)
        return found

    def files_under(self, path: str) -> list[StoredFile]:
        """Every stored image at or below `path` (present or missing), by path."""
        where, args = tree(path)
        query = f"SELECT {STORED_FILE} FROM images WHERE {where} ORDER BY path"
        return [stored_file(row) for row in self.db.reader().execute(query, args)]

    def by_sha256(self, digests: Sequence[str]) -> dict[str, list[StoredFile]]:
        """Stored images with each content hash."""
        found: dict[str, list[StoredFile]] = {}
        for chunk, marks in chunked(digests):
            query = f"SELECT {STORED_FILE} FROM images WHERE sha256 IN ({marks}) ORDER BY id"
            for row in self.db.reader().execute(query, chunk):
                found.setdefault(row[2], []).append(stored_file(row))
        return found

    def shared_hashes(self, under: str | None = None) -> list[ImageRow]:
        """Present images whose bytes another present one has too (both at or below `under`),
        by content hash, then path."""
        where, args = tree(under) if under is not None else ("1", ())
        rows = self.db.reader().execute(
            f"SELECT {IMAGE_ROW} FROM images WHERE missing=0 AND {where} AND sha256 IN"
            f" (SELECT sha256 FROM images WHERE missing=0 AND {where}"
            "  GROUP BY sha256 HAVING count(*) > 1) ORDER BY sha256, path",
            (*args, *args),
        )
        return [ImageRow(*row) for row in rows]

    def image_rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        """What is stored of each id (present or missing) besides its vector."""
        found: dict[int, ImageRow] = {}
        for chunk, marks in chunked([int(i) for i in ids]):
            query = f"SELECT {IMAGE_ROW} FROM images WHERE id IN ({marks})"
            for row in self.db.reader().execute(query, chunk):
                found[row[0]] = ImageRow(*row)
        return found

    def present_rows(self, size: int) -> Iterator[list[tuple[object, ...]]]:
        """Every present image as EXPORTED_ROW's columns, in id order, `size` rows at a time,
        from one statement (one snapshot of the table, however long the caller takes)."""
        cursor = self.db.reader().execute(
            f"SELECT {EXPORTED_ROW} FROM images WHERE 1 AND +missing=0 ORDER BY id"
        )
        while rows := cursor.fetchmany(size):
            yield rows

    def ids(self) -> np.ndarray:
        """Ids of the present images (the ones the index must hold)."""
        rows = self.db.reader().execute("SELECT id FROM images WHERE missing=0 ORDER BY id")
        found = rows.fetchall()
        return np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))

    def vectors(
        self, since_generation: int = 0, chunk: int = 10_000, ids: Sequence[int] | None = None
    ) -> Iterator[VectorChunk]:
        """Ids and vectors of present rows written after `since_generation` (or of `ids`)."""
        conn = self.db.reader()
        if ids is None:
            # `+missing`: no index on it here. Everything: in rowid order, no sort; since a
            # generation: the few newer rows through images_generation, in generation order
            # (an ORDER BY id would sort every row, its vector included, before the first one).
            since = (
                "WHERE 1 AND +missing=0 ORDER BY id"
                if since_generation <= 0
                else "INDEXED BY images_generation WHERE generation > ? AND +missing=0"
            )
            cursor = conn.execute(
                f"SELECT id, vector FROM images {since}",
                () if since_generation <= 0 else (since_generation,),
            )
            yield from vector_chunks(cursor, chunk, self._dim())
            return
        for part, marks in chunked([int(i) for i in ids], chunk):
            cursor = conn.execute(
                f"SELECT id, vector FROM images WHERE id IN ({marks}) AND missing=0 ORDER BY id",
                part,
            )
            yield from vector_chunks(cursor, chunk, self._dim())

    def deleted_since(self, generation: int) -> np.ndarray | None:
        """Sorted ids deleted or marked missing by writes after `generation` (some may be
        present again); None if the deletions log does not reach back that far."""
        conn = self.db.reader()
        row = conn.execute("SELECT value FROM meta WHERE key='deletions_from'").fetchone()
        if row is None or generation < int(row[0]):
            return None
        rows = conn.execute(
            "SELECT DISTINCT id FROM deletions WHERE generation > ? ORDER BY id", (generation,)
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    # -- writes -------------------------------------------------------------------------------

    def forget_deletions(self, generation: int) -> None:
        """Drop the deletions log up to `generation` (no start-up needs it from an older one);
        the log is then complete from there. The rows go FORGET_CHUNK to a transaction, so
        writes wait for one chunk, never for the whole log (1M rows after removing 10% of
        10M); rows left by a crash meanwhile are never read (`deleted_since` reads newer)."""
        with self.db.write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='deletions_from'").fetchone()
            if row is None or int(row[0]) >= generation:
                return
            conn.execute("UPDATE meta SET value=? WHERE key='deletions_from'", (str(generation),))
        gone = FORGET_CHUNK
        while gone == FORGET_CHUNK:
            with self.db.write() as conn:
                gone = conn.execute(
                    "DELETE FROM deletions WHERE (generation, id) IN (SELECT generation, id "
                    "FROM deletions WHERE generation <= ? ORDER BY generation, id LIMIT ?)",
                    (generation, FORGET_CHUNK),
                ).rowcount

    def upsert(self, items: Sequence[NewImage] | Rows) -> WriteResult:
        """Insert or replace images by path, in one transaction (a few statements a batch:
        one lookup per CHUNK paths, one executemany for the updates, multi-row INSERTs)."""
        rows = items if isinstance(items, Rows) else Rows.of(items)
        now = time.time()
        with self.db.write() as conn:
            generation = bump(conn)
            ids, updated = upsert_many(conn, rows, generation, now)
        return WriteResult(ids, updated, [], generation)

    def remove_tree(self, path: str) -> WriteResult:
        """Delete `path` itself and everything stored below it."""
        where, args = tree(path)
        with self.db.write() as conn:
            found = conn.execute(f"SELECT id, missing FROM images WHERE {where}", args).fetchall()
            if not found:
                return WriteResult(generation=current(conn))
            generation = bump(conn)
            conn.execute(f"DELETE FROM images WHERE {where}", args)
            forget(conn, found, generation)
        return WriteResult(removed=[int(r[0]) for r in found], generation=generation)

    def remove_ids(self, ids: Sequence[int]) -> WriteResult:
        """Delete these images (the ones that are there)."""
        found: list[tuple[int, int]] = []
        with self.db.write() as conn:
            for chunk, marks in chunked(sorted({int(i) for i in ids})):  # each id counted once
                query = f"SELECT id, missing FROM images WHERE id IN ({marks})"
                found += conn.execute(query, chunk).fetchall()
            if not found:
                return WriteResult(generation=current(conn))
            generation = bump(conn)  # before the deletes: the deletions log stamps them with it
            removed = [int(r[0]) for r in found]
            for chunk, marks in chunked(removed):
                conn.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
            forget(conn, found, generation)
        return WriteResult(removed=removed, generation=generation)

    def set_missing(self, ids: Sequence[int], missing: bool) -> WriteResult:
        """Mark images missing (their folder vanished: `removed`) or present again (`ids`)."""
        with self.db.write() as conn:
            generation = current(conn) + 1
            changed = flip(conn, ids, missing, generation, time.time())
            generation = bump(conn) if changed else current(conn)
        if missing:
            return WriteResult(removed=changed, generation=generation)
        return WriteResult(ids=changed, updated=changed, generation=generation)

    def move(self, image_id: int, path: str, size: int, mtime_ns: int) -> WriteResult:
        """Give a stored image a new path (a rename: same content, same vector).

        A row already stored at the new path is replaced by the moved one (`removed`); where
        `image_id` is not stored (any more) nothing changes (no `ids`)."""
        with self.db.write() as conn:
            was = conn.execute("SELECT missing FROM images WHERE id=?", (image_id,)).fetchone()
            if was is None:  # gone meanwhile (removed by another writer): nothing changes
                return WriteResult(generation=current(conn))
            generation = bump(conn)
            row = conn.execute(
                "SELECT id, missing FROM images WHERE path=? AND id<>?", (path, image_id)
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM images WHERE id=?", (row[0],))
                forget(conn, [row], generation)
            conn.execute(
                "UPDATE images SET path=?, size=?, mtime_ns=?, missing=0, generation=?,"
                " updated_at=? WHERE id=?",
                (path, size, mtime_ns, generation, time.time(), image_id),
            )
            if was[0]:  # a missing image found at its new path
                add_counts(conn, present=1, missing=-1)
        moved = [int(image_id)]
        return WriteResult(moved, moved, [] if row is None else [int(row[0])], generation)

    def integrity_check(self) -> str:
        return str(self.db.reader().execute("PRAGMA integrity_check").fetchone()[0])
