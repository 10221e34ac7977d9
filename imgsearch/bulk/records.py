"""The saved records of bulk jobs (imports, exports): each job's record in FOLDER/ID.json,
written atomically as it goes, read back at the next start (the newest HISTORY finished ones
kept), and the jobs by id for the routes."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..errors import NotFound
from ..files import TEMP_PREFIX, write_atomic

log = logging.getLogger(__name__)

HISTORY = 200  # finished jobs kept (the newest)
PENDING = frozenset({"queued", "running"})


class Job(Protocol):
    id: str
    state: str
    created: float
    ended: threading.Event

    def record(self) -> dict[str, Any]: ...


J = TypeVar("J", bound=Job)


class Records(Generic[J]):
    """The jobs of one kind (`kind` names them in a 404), each saved as `folder`/ID.json."""

    def __init__(self, folder: Path, kind: str, from_record: Callable[[dict[str, Any]], J]):
        self.folder, self.kind = folder, kind
        self.folder.mkdir(exist_ok=True)
        self._jobs: dict[str, J] = {}
        self._guard = threading.Lock()
        for stray in self.folder.glob(f"{TEMP_PREFIX}*"):  # a save a kill -9 cut short
            stray.unlink(missing_ok=True)
        saved = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        loaded = [(path, job) for path in saved if (job := self._read(path, from_record))]
        for index, (path, job) in enumerate(loaded):
            if job.state not in PENDING and index < len(loaded) - HISTORY:
                path.unlink()  # an old finished job: only the newest HISTORY are kept
                continue
            self._jobs[job.id] = job

    def _read(self, path: Path, from_record: Callable[[dict[str, Any]], J]) -> J | None:
        """A saved job; None for a record that cannot be read (a power cut's empty file, a
        hand edit, a newer version's), moved aside as ID.json.bad: one job is lost, not
        every later start."""
        try:
            job = from_record(json.loads(path.read_text()))
            if not isinstance(job.created, int | float) or not isinstance(job.state, str):
                raise TypeError("created must be a number, state a string")  # (sorted, shown)
            return job
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s record %s cannot be read (%s): moved aside", self.kind, path, exc)
            path.replace(path.with_name(path.name + ".bad"))
            return None

    def add(self, job: J, unless: Callable[[J], bool] | None = None) -> bool:
        """Keep and save `job`, unless a job already kept matches `unless` (False then)."""
        with self._guard:
            if unless is not None and any(unless(j) for j in self._jobs.values()):
                return False
            self._jobs[job.id] = job
        try:
            self.save(job)
        except BaseException:  # (a full disk: a job listed but never run would block a retry)
            with self._guard:
                self._jobs.pop(job.id, None)
            raise
        return True

    def save(self, job: J) -> None:
        write_atomic(self.folder / f"{job.id}.json", json.dumps(job.record()).encode())

    def end(self, job: J) -> None:
        """Save a job's last record and signal its end, also where the record cannot be
        saved (a full disk: the end is known here all the same; the record left says
        "queued" or "running", which the next start takes up)."""
        try:
            self.save(job)
        except OSError as exc:
            log.warning("%s %s: its record not saved: %s", self.kind, job.id, exc)
        finally:
            job.ended.set()

    def get(self, job_id: str) -> J:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no such {self.kind}: {job_id}") from None

    def kept(self) -> list[J]:
        """In the order kept: the saved ones oldest first, then the new ones."""
        return list(self._jobs.values())

    def list(self) -> list[J]:
        """Newest first."""
        return sorted(list(self._jobs.values()), key=lambda j: j.created, reverse=True)
