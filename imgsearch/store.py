"""SQLite store: the source of truth for image paths, file facts and vectors.

One write connection guarded by a lock (the single writer); each thread reads through its own
connection, which WAL mode lets run alongside the writer. Every write transaction bumps a
generation counter and stamps the rows it writes, so the FAISS index can tell how far behind it is.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        vector BLOB NOT NULL,
        generation INTEGER NOT NULL,
        added_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX images_sha256 ON images(sha256);
    CREATE INDEX images_generation ON images(generation);
    INSERT INTO meta(key, value) VALUES ('generation', '0');
    """,
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        image TEXT NOT NULL,
        refresh INTEGER NOT NULL,
        state TEXT NOT NULL,
        done INTEGER NOT NULL,
        total INTEGER,
        report TEXT NOT NULL,
        error TEXT,
        created REAL NOT NULL,
        started REAL,
        finished REAL
    );
    CREATE INDEX jobs_created ON jobs(created);
    """,
    # v3: where a downloaded image came from; images of a vanished watched folder kept as
    # `missing` (out of the index, back when the folder returns); the watched folders.
    """
    ALTER TABLE images ADD COLUMN source TEXT;
    ALTER TABLE images ADD COLUMN missing INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX images_path_missing ON images(missing, path);
    CREATE TABLE watches (path TEXT PRIMARY KEY, added REAL NOT NULL);
    """,
)


@dataclass(frozen=True)
class FileFacts:
    """What is stored about an image file besides its vector."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    source: str | None = None  # the URL a downloaded image came from


@dataclass(frozen=True)
class NewImage:
    """An embedded file, ready to be written."""

    facts: FileFacts
    vector: np.ndarray


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
class WriteResult:
    """Ids written by one transaction; `updated` are the ones that already existed."""

    ids: list[int]
    updated: list[int]
    generation: int


class Store:
    """The images database under the data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writer = self._connect(check_same_thread=False)
        self._migrate()

    def _connect(self, *, check_same_thread: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=check_same_thread
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Only this thread uses it; the flag just lets close() shut it from another thread.
            conn = self._connect(check_same_thread=False)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"{self.path} has schema version {version}, newer than this imgsearch "
                    f"({len(MIGRATIONS)}); upgrade imgsearch"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                log.info("database %s migrated to schema version %d", self.path, number)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction at a time, committed whole or not at all."""
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()

    # -- model stamp -------------------------------------------------------------------------

    def bind_model(self, model_id: str, dim: int) -> None:
        """Record the model on first use; refuse to mix vectors of different models."""
        with self._write() as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('model', 'dim')"))
            if not rows:
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("model", model_id), ("dim", str(dim))],
                )
                return
        if rows.get("model") != model_id or rows.get("dim") != str(dim):
            raise ConfigError(
                f"{self.path} holds vectors of model {rows.get('model')} ({rows.get('dim')}-d), "
                f"but the daemon was started with {model_id} ({dim}-d). Start it with the same "
                "--model/--pretrained/--checkpoint, or use another --data-dir for the new model"
            )

    # -- reads --------------------------------------------------------------------------------

    def generation(self) -> int:
        row = self._reader().execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    def count(self) -> int:
        """Images present (searchable); `missing()` counts the ones of vanished folders."""
        row = self._reader().execute("SELECT count(*) FROM images WHERE missing=0").fetchone()
        return int(row[0])

    def missing(self) -> int:
        row = self._reader().execute("SELECT count(*) FROM images WHERE missing=1").fetchone()
        return int(row[0])

    def file_states(self, paths: Sequence[str]) -> dict[str, FileState]:
        """Known size/mtime of each path that is in the store."""
        conn = self._reader()
        found: dict[str, FileState] = {}
        for start in range(0, len(paths), 500):
            chunk = list(paths[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT path, id, size, mtime_ns, missing FROM images WHERE path IN ({marks})"
            for path, id_, size, mtime_ns, missing in conn.execute(query, chunk):
                found[path] = FileState(id_, size, mtime_ns, bool(missing))
        return found

    def paths(self, ids: Sequence[int]) -> dict[int, Located]:
        """Path, mtime_ns and source of each id that is in the store."""
        conn = self._reader()
        found: dict[int, Located] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, path, mtime_ns, source FROM images WHERE id IN ({marks})"
            for id_, path, mtime_ns, source in conn.execute(query, chunk):
                found[id_] = Located(path, mtime_ns, source)
        return found

    def files_under(self, path: str) -> list[StoredFile]:
        """Every stored image at or below `path` (present or missing), by path."""
        where, args = _tree(path)
        rows = self._reader().execute(
            "SELECT id, path, sha256, size, mtime_ns, missing FROM images"
            f" WHERE {where} ORDER BY path",
            args,
        )
        return [StoredFile(i, p, h, sz, m, bool(miss)) for i, p, h, sz, m, miss in rows]

    def by_sha256(self, digests: Sequence[str]) -> dict[str, list[StoredFile]]:
        """Stored images with each content hash."""
        conn = self._reader()
        found: dict[str, list[StoredFile]] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = (
                "SELECT id, path, sha256, size, mtime_ns, missing FROM images"
                f" WHERE sha256 IN ({marks}) ORDER BY id"
            )
            for i, p, h, sz, m, miss in conn.execute(query, chunk):
                found.setdefault(h, []).append(StoredFile(i, p, h, sz, m, bool(miss)))
        return found

    def shared_hashes(self, under: str | None = None) -> list[ImageRow]:
        """Present images whose bytes another present one has too (both at or below `under`),
        by content hash, then path."""
        where, args = _tree(under) if under is not None else ("1", ())
        rows = self._reader().execute(
            f"SELECT {_ROW} FROM images WHERE missing=0 AND {where} AND sha256 IN"
            f" (SELECT sha256 FROM images WHERE missing=0 AND {where}"
            "  GROUP BY sha256 HAVING count(*) > 1) ORDER BY sha256, path",
            (*args, *args),
        )
        return [ImageRow(*row) for row in rows]

    def image_rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        """What is stored of each id (present or missing) besides its vector."""
        conn = self._reader()
        found: dict[int, ImageRow] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_ROW} FROM images WHERE id IN ({marks})", chunk):
                found[row[0]] = ImageRow(*row)
        return found

    def ids(self) -> np.ndarray:
        """Ids of the present images (the ones the index must hold)."""
        rows = self._reader().execute("SELECT id FROM images WHERE missing=0 ORDER BY id")
        found = rows.fetchall()
        return np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))

    def vectors(
        self, since_generation: int = 0, chunk: int = 10_000, ids: Sequence[int] | None = None
    ) -> Iterator[VectorChunk]:
        """Ids and vectors of present rows written after `since_generation` (or of `ids`)."""
        if ids is not None:
            for start in range(0, len(ids), chunk):
                part = [int(i) for i in ids[start : start + chunk]]
                marks = ",".join("?" * len(part))
                cursor = self._reader().execute(
                    f"SELECT id, vector FROM images WHERE id IN ({marks}) AND missing=0"
                    " ORDER BY id",
                    part,
                )
                yield from _chunks(cursor, chunk)
            return
        cursor = self._reader().execute(
            "SELECT id, vector FROM images WHERE generation > ? AND missing=0 ORDER BY id",
            (since_generation,),
        )
        yield from _chunks(cursor, chunk)

    # -- watched folders ----------------------------------------------------------------------

    def watches(self) -> list[str]:
        rows = self._reader().execute("SELECT path FROM watches ORDER BY added, path")
        return [r[0] for r in rows]

    def add_watch(self, path: str) -> bool:
        """Remember a watched folder; False if it was already watched."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO watches(path, added) VALUES (?, ?)", (path, time.time())
            )
            return cur.rowcount > 0

    def remove_watch(self, path: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM watches WHERE path=?", (path,)).rowcount > 0

    # -- writes -------------------------------------------------------------------------------

    def _bump(self, conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        return int(conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def upsert(self, items: Sequence[NewImage]) -> WriteResult:
        """Insert or replace images by path, in one transaction."""
        now = time.time()
        ids: list[int] = []
        updated: list[int] = []
        with self._write() as conn:
            generation = self._bump(conn)
            for item in items:
                facts = item.facts
                values = (
                    facts.size,
                    facts.mtime_ns,
                    facts.sha256,
                    facts.width,
                    facts.height,
                    np.ascontiguousarray(item.vector, dtype="<f4").tobytes(),
                    generation,
                    now,
                    facts.source,
                )
                row = conn.execute("SELECT id FROM images WHERE path=?", (facts.path,)).fetchone()
                if row is None:
                    cur = conn.execute(
                        "INSERT INTO images(size, mtime_ns, sha256, width, height, vector,"
                        " generation, updated_at, source, added_at, path)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (*values, now, facts.path),
                    )
                    ids.append(int(cur.lastrowid or 0))
                else:  # a re-add of a downloaded file without a URL keeps its source
                    conn.execute(
                        "UPDATE images SET size=?, mtime_ns=?, sha256=?, width=?, height=?,"
                        " vector=?, generation=?, updated_at=?, source=coalesce(?, source),"
                        " missing=0 WHERE id=?",
                        (*values, row[0]),
                    )
                    ids.append(int(row[0]))
                    updated.append(int(row[0]))
        return WriteResult(ids, updated, generation)

    def remove_tree(self, path: str) -> list[int]:
        """Delete `path` itself and everything stored below it; return the ids removed."""
        where, args = _tree(path)
        with self._write() as conn:
            ids = [int(r[0]) for r in conn.execute(f"SELECT id FROM images WHERE {where}", args)]
            if ids:
                self._bump(conn)
                conn.execute(f"DELETE FROM images WHERE {where}", args)
        return ids

    def set_missing(self, ids: Sequence[int], missing: bool) -> int:
        """Mark images missing (their folder vanished) or present again; return how many."""
        changed = 0
        with self._write() as conn:
            generation = self._bump(conn)
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start : start + 500]]
                marks = ",".join("?" * len(chunk))
                cur = conn.execute(
                    f"UPDATE images SET missing=?, generation=?, updated_at=? WHERE id IN ({marks})"
                    " AND missing=?",
                    (int(missing), generation, time.time(), *chunk, int(not missing)),
                )
                changed += cur.rowcount
        return changed

    def move(self, image_id: int, path: str, size: int, mtime_ns: int) -> int | None:
        """Give a stored image a new path (a rename: same content, same vector).

        A row already stored at the new path is replaced by the moved one; its id is returned."""
        with self._write() as conn:
            generation = self._bump(conn)
            row = conn.execute(
                "SELECT id FROM images WHERE path=? AND id<>?", (path, image_id)
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM images WHERE id=?", (row[0],))
            conn.execute(
                "UPDATE images SET path=?, size=?, mtime_ns=?, missing=0, generation=?,"
                " updated_at=? WHERE id=?",
                (path, size, mtime_ns, generation, time.time(), image_id),
            )
        return None if row is None else int(row[0])

    def remove_ids(self, ids: Sequence[int]) -> list[int]:
        """Delete these images; return the ids that were there."""
        removed: list[int] = []
        with self._write() as conn:
            self._bump(conn)
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start : start + 500]]
                marks = ",".join("?" * len(chunk))
                found = conn.execute(f"SELECT id FROM images WHERE id IN ({marks})", chunk)
                removed += [int(r[0]) for r in found]
                conn.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
        return removed

    # -- jobs ---------------------------------------------------------------------------------

    def save_job(self, job: JobRow) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO jobs(id, image, refresh, state, done, total, report,"
                " error, created, started, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                dataclasses.astuple(job),
            )

    def delete_job(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def jobs(self, limit: int) -> list[JobRow]:
        """The newest `limit` jobs, oldest first."""
        rows = self._reader().execute(
            "SELECT id, image, refresh, state, done, total, report, error, created, started,"
            " finished FROM jobs ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [JobRow(*row) for row in reversed(rows.fetchall())]

    def interrupt_jobs(self) -> int:
        """Mark jobs a previous run left queued or running as interrupted; return how many."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state='interrupted', finished=?"
                " WHERE state IN ('queued', 'running')",
                (time.time(),),
            )
            return cur.rowcount

    def integrity_check(self) -> str:
        return str(self._reader().execute("PRAGMA integrity_check").fetchone()[0])


@dataclass(frozen=True)
class JobRow:
    """A job as stored: `report` is its AddReport as JSON."""

    id: str
    image: str
    refresh: bool
    state: str
    done: int
    total: int | None
    report: str
    error: str | None
    created: float
    started: float | None
    finished: float | None


@dataclass(frozen=True)
class VectorChunk:
    ids: np.ndarray
    vectors: np.ndarray


_ROW = "id, path, sha256, size, mtime_ns, width, height, source"


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


def _tree(path: str) -> tuple[str, tuple[str, str, str]]:
    """A WHERE clause matching `path` itself and every path below it."""
    below = path.rstrip("/") + "/"
    # '0' sorts right after '/', so [below, below0) is exactly the paths under the folder.
    return "(path = ? OR (path >= ? AND path < ?))", (path, below, below[:-1] + "0")


def _chunks(cursor: sqlite3.Cursor, size: int) -> Iterator[VectorChunk]:
    while rows := cursor.fetchmany(size):
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
        yield VectorChunk(ids, vecs.astype(np.float32, copy=False))
