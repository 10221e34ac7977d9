"""Watched folders: keep the catalog in step with files created, changed, moved and deleted.

Each folder has a thread. It first syncs the folder (index what is new or changed, forget what
was deleted), then follows watchfiles' batched change sets. It is a producer for the ingest
core: the files that appeared go to `Ingester.add_files`, which skips what is unchanged and
follows moves (a file with the content of a stored image whose old path is gone keeps that
row and its vector). A file whose folder has vanished (an unmounted disk, a folder moved
away) is not forgotten: it is marked missing, out of the index but kept in SQLite, and comes
back unchanged when the folder returns. Only a file deleted from a folder that still exists
is forgotten.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .errors import BadRequest, ConfigError, NotFound, disk_full
from .ingest import AddReport, FileError, Ingester, nameable, walk
from .store import StoredFile

log = logging.getLogger(__name__)

ERRORS_KEPT = 50
# After a write that found the disk full, a folder is synced again (walked whole) this much later.
DISK_FULL_WAIT_S = 60.0


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
        return {
            "dir": str(self.path),
            "state": self.state,
            "since": self.since,
            "synced": self.synced,
            "done": self.done,
            "total": self.total,
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "missing": self.missing,
            "restored": self.restored,
            "errors": [{"image": e.image, "error": e.error} for e in self.errors],
        }


class Watcher:
    """The watched folders of one daemon; persisted, so a restart watches them again."""

    def __init__(
        self,
        catalog: Catalog,
        ingester: Ingester,
        *,
        extensions: frozenset[str],
        allows: Callable[[Path], bool],
        ignore: Path,
        poll_s: float = 1.0,
        debounce_ms: int = 800,
    ) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.ingester = ingester
        self.extensions = extensions
        self.allows = allows
        self.ignore = ignore
        self.poll_s = poll_s
        self.debounce_ms = debounce_ms
        self._watches: dict[Path, Watch] = {}
        self._lock = threading.Lock()

    # -- the folders ----------------------------------------------------------------------------

    def start(self, extra: Iterable[Path] = ()) -> None:
        """Watch the folders remembered from earlier runs and `extra` (e.g. from --watch)."""
        for path in extra:
            if path.exists() and not path.is_dir():
                raise ConfigError(f"--watch {path}: not a folder")
            if not self.allows(path):
                raise ConfigError(f"--watch {path}: outside the folders this daemon may read")
        for path in [Path(p) for p in self.store.watches.list()]:
            if self.allows(path):
                self.add(path, must_exist=False)
            else:
                log.warning("not watching %s any more: outside --allow-root", path)
        for path in extra:
            self.add(path, must_exist=False)

    def add(self, path: Path, *, must_exist: bool = True) -> tuple[Watch, bool]:
        """Start watching `path` (absolute); return its watch and whether it is new."""
        if must_exist and not path.is_dir():
            if path.exists():
                raise BadRequest(f"not a folder: {path}")
            raise NotFound(f"no such folder: {path}")
        with self._lock:
            if path in self._watches:
                return self._watches[path], False
            self.store.watches.add(str(path))
            watch = Watch(path)
            watch.thread = threading.Thread(
                target=self._follow, args=(watch,), name=f"watch {path}", daemon=True
            )
            self._watches[path] = watch
        watch.thread.start()
        log.info("watching %s", path)
        return watch, True

    def remove(self, path: Path) -> Watch:
        """Stop watching `path`; its images stay indexed."""
        with self._lock:
            watch = self._watches.pop(path, None)
            if watch is None:
                raise NotFound(f"not watched: {path}")
            self.store.watches.remove(str(path))
        self._stop(watch)
        return watch

    def watches(self) -> list[Watch]:
        with self._lock:
            return list(self._watches.values())

    def count(self) -> int:
        """How many folders are watched, without the lock (that adding a watch holds over a
        write): /stats reads it on the event loop."""
        return len(self._watches)

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.stop.set()
        for watch in watches:
            self._stop(watch)

    def _stop(self, watch: Watch) -> None:
        watch.stop.set()
        if watch.thread is not None and watch.thread is not threading.current_thread():
            watch.thread.join(timeout=60)
        watch.state = "stopped"

    # -- one folder's thread --------------------------------------------------------------------

    def _follow(self, watch: Watch) -> None:
        """Sync, then apply change sets; wait while the folder is gone; never die."""
        import watchfiles

        polling: bool | None = None  # None: watchfiles decides (WATCHFILES_FORCE_POLLING, WSL)
        while not watch.stop.is_set():
            try:
                if not watch.path.is_dir():
                    self._vanished(watch)
                    watch.stop.wait(self.poll_s)
                    continue
                self._sync(watch)
                watch.state = "watching"
                for changes in watchfiles.watch(
                    watch.path,
                    stop_event=watch.stop,
                    debounce=self.debounce_ms,
                    rust_timeout=int(self.poll_s * 1000),
                    yield_on_timeout=True,
                    raise_interrupt=False,
                    force_polling=polling,
                ):
                    if not watch.path.is_dir():
                        break  # unmounted or moved away: the next turn marks it missing
                    if changes:
                        self._apply(watch, changes)
            except Exception as exc:
                if (full := disk_full(exc)) is not None:  # not the watching's fault
                    log.warning("watching %s: %s", watch.path, full.message)
                    watch.stop.wait(DISK_FULL_WAIT_S)
                    continue
                if polling is None and isinstance(exc, OSError | RuntimeError):
                    # e.g. out of inotify watches (fs.inotify.max_user_watches), or a network
                    # file system that sends no events: scan for changes instead.
                    log.warning("watching %s: %s; polling it instead", watch.path, exc)
                    polling = True
                else:
                    log.exception("watching %s failed; retrying", watch.path)
                watch.stop.wait(self.poll_s)

    def _vanished(self, watch: Watch) -> None:
        if watch.state != "missing":
            marked = self.catalog.mark_missing(str(watch.path))
            watch.missing += len(marked)
            watch.state = "missing"
            log.warning(
                "%s is gone: %d images marked missing until it returns", watch.path, len(marked)
            )

    def _sync(self, watch: Watch) -> None:
        """Index what is new or changed under the folder, restore what came back, prune."""
        watch.state = "syncing"
        report = AddReport()
        files = [f for f in walk(watch.path, self.extensions, report) if self._wanted(f)]
        self._place(watch, files, report)
        self._prune(watch, self.store.files_under(str(watch.path)))
        watch.synced = time.time()

    def _apply(self, watch: Watch, changes: set[tuple[Any, str]]) -> None:
        """One batch of changes: place what appeared (moves first), then forget what went."""
        from watchfiles import Change

        appeared: list[Path] = []
        gone: list[str] = []
        report = AddReport()
        for change, raw in sorted(changes, key=lambda c: c[1]):
            path = Path(raw)
            if not nameable(path, report):  # (never stored, so never to forget either)
                continue
            if change == Change.deleted:
                gone.append(raw)
            elif path.is_dir():
                appeared += walk(path, self.extensions, report)
            elif path.suffix.lower() in self.extensions and path.is_file():
                appeared.append(path.resolve())
        self._place(watch, [f for f in dict.fromkeys(appeared) if self._wanted(f)], report)
        for raw in gone:
            if not os.path.lexists(raw):
                self._prune(watch, self.store.files_under(raw))

    def _wanted(self, path: Path) -> bool:
        """An image the daemon may read, not one of its own files (caches under the data dir)."""
        return not path.is_relative_to(self.ignore) and self.allows(path)

    def _place(self, watch: Watch, files: list[Path], report: AddReport) -> None:
        """Hand what appeared to the ingest core (it follows moves, skips what is unchanged)."""

        def progress(done: int, total: int) -> None:
            watch.done, watch.total = done, total

        if files:
            self.ingester.add_files(
                files,
                label=str(watch.path),
                stop=watch.stop,
                on_progress=progress,
                report=report,
                progress_bar=False,
            )
        watch.count(report)

    def _prune(self, watch: Watch, rows: list[StoredFile]) -> None:
        """Stored images whose file is gone: forget them if their folder is still there, mark
        them missing if the folder itself vanished."""
        deleted: list[int] = []
        vanished: set[str] = set()
        for row in rows:
            if os.path.lexists(row.path):
                continue
            folder = os.path.dirname(row.path)
            if os.path.isdir(folder):
                deleted.append(row.id)
            elif not row.missing:
                vanished.add(folder)
        if deleted:
            watch.removed += len(self.catalog.remove_ids(deleted))
        for folder in sorted(vanished):
            watch.missing += len(self.catalog.mark_missing(folder))
