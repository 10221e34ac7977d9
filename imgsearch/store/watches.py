"""The `watches` table: the folders watched across restarts."""

from __future__ import annotations

import time

from .db import Database


class Watches:
    """Watched folders, in the order they were added."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self) -> list[str]:
        rows = self.db.reader().execute("SELECT path FROM watches ORDER BY added, path")
        return [r[0] for r in rows]

    def add(self, path: str) -> bool:
        """Remember a watched folder; False if it was already watched."""
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO watches(path, added) VALUES (?, ?)", (path, time.time())
            )
            return cur.rowcount > 0

    def remove(self, path: str) -> bool:
        """Forget a watched folder; False if it was not watched."""
        with self.db.write() as conn:
            return conn.execute("DELETE FROM watches WHERE path=?", (path,)).rowcount > 0
