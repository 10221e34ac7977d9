"""The SQLite connections: one writer under a lock, one reader per thread, WAL between them.

WAL lets readers run alongside the single writer; each thread reads through its own connection
(never shared across threads), and every write runs as one `BEGIN IMMEDIATE` transaction.
Hooks registered with `after_commit` run on the writer's connection after each commit, still
under the write lock: what they read is what that transaction left (the row counters that
/stats serves from memory, store/images.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import FREE_SPACE, ConfigError, DiskFull

log = logging.getLogger(__name__)

CHUNK = 500  # ids per `IN (...)`: well under SQLite's bound-parameter limit
T = TypeVar("T")
# A database that cannot be opened where its disk has less than this free: a full disk (SQLite
# says "disk I/O error" where it cannot make its WAL index file, not SQLITE_FULL).
ROOM_BYTES = 1 << 20
# A new database's page size: the one of these holding an image row in the fewest bytes, a
# larger one only where it saves at least PAGE_GAIN. A row lies whole in one page (SQLite spills
# a row to overflow pages only beyond nearly a page), so at 4 KB a 1280-d row (a 2,560-byte
# float16 vector and ~150 bytes of path and facts) filled a page alone: 4,347 bytes of database
# an image against 2,978 with 16 KB pages, whose 40-row reads by id took 0.38 ms against 0.35
# (bench/page_size.py). A 512-d row (~1.2 KB) packs three to a 4 KB page, within 7% of what
# 16 KB pages would (1,610 against 1,507 bytes), so 512-d keeps SQLite's default.
WAL_LIMIT_BYTES = 64 << 20
PAGE_SIZES = (4096, 8192, 16384)
PAGE_GAIN = 0.1
PAGE_HEADER = 8  # a table leaf page's header
CELL_EXTRA = 8  # a row's cell pointer and its length and rowid varints


class Database:
    """The connections to one SQLite file."""

    def __init__(self, path: Path, page_bytes: int = PAGE_SIZES[0]) -> None:
        """`page_bytes`: the page size if this creates the file (an existing one keeps its own:
        SQLite changes it only by rewriting the whole file)."""
        self.path = path
        for need in (path, path.parent):  # (SQLite would open the file read-only, silently)
            if need.exists() and not os.access(need, os.W_OK):
                raise ConfigError(
                    f"the database {path} cannot be written ({need} is read-only to this user): "
                    "give the daemon a data dir it may write to"
                )
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writer = _connect(path, page_bytes)
        self._hooks: list[Callable[[sqlite3.Connection], None]] = []

    def after_commit(self, hook: Callable[[sqlite3.Connection], None]) -> None:
        """Call `hook(writer)` after every commit from now on, under the write lock; it runs
        once now (under the lock too) so it starts from the database as it is."""
        with self._write_lock:
            self._hooks.append(hook)
            hook(self._writer)

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
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
            for hook in self._hooks:
                try:
                    hook(conn)
                except sqlite3.Error:  # the write is committed: say so, not that it failed
                    log.exception("after-commit hook %r failed", hook)

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()


def page_size(row_bytes: int) -> int:
    """The page size (of PAGE_SIZES) for rows of about `row_bytes` (PAGE_SIZES, PAGE_GAIN)."""
    best = PAGE_SIZES[0]
    for size in PAGE_SIZES[1:]:
        if _row_share(size, row_bytes) <= (1 - PAGE_GAIN) * _row_share(best, row_bytes):
            best = size
    return best


def _row_share(page: int, row_bytes: int) -> float:
    """The bytes of a page a row takes where pages of `page` bytes hold rows of `row_bytes`."""
    return page / max(1, (page - PAGE_HEADER) // (row_bytes + CELL_EXTRA))


def _connect(path: Path, page_bytes: int | None = None) -> sqlite3.Connection:
    """A connection in WAL mode; DiskFull where it fails on a disk with no room left."""
    try:
        return _connected(path, page_bytes)
    except sqlite3.OperationalError as exc:
        free = shutil.disk_usage(path.parent).free
        if free >= ROOM_BYTES:
            raise
        raise DiskFull(
            f"the database {path} cannot be opened ({exc}) with {free:,} bytes free on its "
            f"disk: {FREE_SPACE}"
        ) from exc


def _connected(path: Path, page_bytes: int | None) -> sqlite3.Connection:
    # check_same_thread=False only so close() can shut a connection from another thread; each
    # reader is used by its own thread, and the writer only under the write lock.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        if page_bytes is not None:  # before WAL: a new file's first write fixes its page size
            conn.execute(f"PRAGMA page_size={int(page_bytes)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # The WAL cut back to this once a checkpoint has emptied it: a long read (an export)
        # beside writes (an import) grew it by every batch, and it kept that size for good.
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


def chunked(values: Sequence[T], size: int = CHUNK) -> Iterator[tuple[list[T], str]]:
    """Slices of `values` with the matching `?,?,...` placeholders, for `IN (...)` queries."""
    for start in range(0, len(values), size):
        chunk = list(values[start : start + size])
        yield chunk, ",".join("?" * len(chunk))


def tree(path: str) -> tuple[str, tuple[str, str, str]]:
    """A WHERE clause matching `path` itself and every path below it."""
    below = path.rstrip("/") + "/"
    # '0' sorts right after '/', so [below, below0) is exactly the paths under the folder.
    return "(path = ? OR (path >= ? AND path < ?))", (path, below, below[:-1] + "0")
