"""The `jobs` table: every add's record, kept so a restart can show what was interrupted."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from .db import Database

_COLUMNS = (
    'id, kind, image, "update", state, done, total, report, error, created, started, finished'
)
KINDS = ("path", "urls", "import")


@dataclass(frozen=True)
class JobRow:
    """A job as stored: `report` is its AddReport as JSON."""

    id: str
    kind: str  # one of KINDS
    image: str
    update: bool
    state: str
    done: int
    total: int | None
    report: str
    error: str | None
    created: float
    started: float | None
    finished: float | None


class Jobs:
    """Job records, newest kept."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, job: JobRow) -> None:
        """Insert or replace a job's record."""
        with self.db.write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO jobs({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                dataclasses.astuple(job),
            )

    def delete(self, job_id: str) -> None:
        """Forget a job's record."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recent(self, limit: int) -> list[JobRow]:
        """The newest `limit` jobs, oldest first."""
        rows = self.db.reader().execute(
            f"SELECT {_COLUMNS} FROM jobs ORDER BY created DESC LIMIT ?", (limit,)
        )
        return [JobRow(*row) for row in reversed(rows.fetchall())]

    def trim(self, keep: int) -> int:
        """Forget all but the newest `keep` finished jobs (every add writes one: the table grew
        without end); return how many went."""
        with self.db.write() as conn:
            cur = conn.execute(
                "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND id NOT IN"
                " (SELECT id FROM jobs ORDER BY created DESC LIMIT ?)",
                (keep,),
            )
            return cur.rowcount

    def interrupt(self) -> int:
        """Mark jobs a previous run left queued or running as interrupted; return how many."""
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state='interrupted', finished=?"
                " WHERE state IN ('queued', 'running')",
                (time.time(),),
            )
            return cur.rowcount
