"""The `meta` table: the model the vectors belong to, and the generation counter."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from .db import Database


class Meta:
    """The model stamp and the generation every image write bumps."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def generation(self) -> int:
        """The generation of the last committed image write."""
        return current(self.db.reader())

    def bind_model(
        self,
        model_id: str,
        dim: int,
        aliases: Sequence[str] = (),
        before_rebind: Callable[[str], None] | None = None,
    ) -> str | None:
        """Record the model on first use; refuse to mix vectors of different models. A data
        dir bound to one of `aliases` (the id an earlier version gave the same weights) is
        rebound to `model_id`, after `before_rebind(old id)` (inside the transaction: should
        it fail, the binding stays); returns the old id then, else None."""
        with self.db.write() as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('model', 'dim')"))
            if not rows:
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("model", model_id), ("dim", str(dim))],
                )
                return None
            old = str(rows.get("model"))
            if old != model_id and old in aliases and rows.get("dim") == str(dim):
                if before_rebind is not None:
                    before_rebind(old)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'model'", (model_id,))
                return old
        if rows.get("model") != model_id or rows.get("dim") != str(dim):
            raise ConfigError(
                f"{self.db.path} holds vectors of model {rows.get('model')} ({rows.get('dim')}-d), "
                f"but the daemon was started with {model_id} ({dim}-d). Start it with the same "
                "--model/--pretrained/--checkpoint, or use another --data-dir for the new model"
            )
        return None


def current(conn: sqlite3.Connection) -> int:
    """The generation as this connection sees it."""
    return int(conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])


def bump(conn: sqlite3.Connection) -> int:
    """Start a new generation inside the caller's write transaction; return it."""
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
    return current(conn)


def add_counts(conn: sqlite3.Connection, present: int = 0, missing: int = 0) -> None:
    """Add to the row counters in `meta` (present and missing images) inside the caller's
    write transaction, a statement a counter that changes. The writes of `images` keep them
    themselves: no trigger a row since schema v10 (`migrations`)."""
    for key, delta in (("present", present), ("missing", missing)):
        if delta:
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (delta, key)
            )
