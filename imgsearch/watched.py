"""A watched folder as the watcher keeps it (and GET /watch shows it), and the path tests its
thread uses on the folders it reaches."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ingest import AddReport, FileError

ERRORS_KEPT = 50
# What GET /watch shows of a watch, between its folder and its errors.
SHOWN = "state since synced done total added updated moved removed missing restored".split()


@dataclass
class Watch:
    """One watched folder and what its thread has done."""

    path: Path
    state: str = "starting"  # syncing, watching, missing, stopped
    since: float = field(default_factory=time.time)
    synced: float | None = None
    done: int = 0
    total: int | None = None
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    missing: int = 0
    restored: int = 0
    device: int | None = None  # st_dev of the folder at its last sync
    inode: int | None = None  # and its st_ino: a folder of the same name put in its place differs
    # Where the last sync looked, resolved: the folder and the symlinked folders it followed.
    tops: frozenset[str] = frozenset()
    # The symlinks to folders it followed (Listing.links): deleting one takes a top away.
    links: frozenset[str] = frozenset()
    errors: deque[FileError] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    def count(self, report: AddReport) -> None:
        self.added += report.added
        self.updated += report.updated
        self.moved += report.moved
        self.restored += report.restored
        self.errors.extend(report.errors)

    def as_json(self) -> dict[str, Any]:
        shown = {name: getattr(self, name) for name in SHOWN}
        errors = [{"image": e.image, "error": e.error} for e in self.errors]
        return {"dir": str(self.path), **shown, "errors": errors}


def within(path: str, tops: Iterable[str]) -> bool:
    """Whether `path` is one of `tops` or below one."""
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


def tops_of(paths: Iterable[str]) -> list[str]:
    """`paths` less those below another of them, sorted."""
    tops: list[str] = []
    for path in sorted(paths):
        if not tops or not path.startswith(tops[-1].rstrip("/") + "/"):
            tops.append(path)
    return tops
