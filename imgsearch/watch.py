"""Watched folders: keep the catalog in step with files created, changed, moved and deleted.

Each folder has a thread. It first syncs the folder (index what is new or changed, forget what
was deleted), then follows watchfiles' batched change sets. It is a producer for the ingest
core: the files that appeared go to `Ingester.add_files`, which skips what is unchanged and
follows moves (a file with the content of a stored image whose old path is gone keeps that
row and its vector). A file whose folder has vanished (an unmounted disk, a folder moved
away) is not forgotten: it is marked missing, out of the index but kept in SQLite, and comes
back unchanged when the folder returns. Only a file deleted from a folder that still exists
is forgotten, and only when the file system says so: a file that cannot be checked (an
unreadable folder: EACCES) is kept. An unmounted disk leaves its mount point, an empty folder
on another device: that counts as the folder vanished too.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .errors import BadRequest, ConfigError, NotFound, disk_full
from .ingest import AddReport, FileError, Ingester, Listing, nameable, walk
from .ingest.folders import is_empty, is_file, is_folder
from .store import StoredFile

log = logging.getLogger(__name__)

ERRORS_KEPT = 50
# After a write that found the disk full, a folder is synced again (walked whole) this much later.
DISK_FULL_WAIT_S = 60.0
# A watch that keeps failing retries (a sync, then the watcher) after poll_s, doubling up to this.
RETRY_MAX_S = 60.0


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
        failures = 0  # in a row: retries back off, and only the first logs a traceback
        while not watch.stop.is_set():
            try:
                if self._away(watch):
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
                    # An unreadable subfolder is left out, not a failure of the whole watch
                    # (the syncs keep its images: they cannot be checked).
                    ignore_permission_denied=True,
                ):
                    failures = 0
                    if not self._synced_folder(watch):
                        break  # unmounted, moved away, mounted over: the next turn tells which
                    if changes:
                        self._apply(watch, changes)
            except Exception as exc:
                if (full := disk_full(exc)) is not None:  # not the watching's fault
                    log.warning("watching %s: %s", watch.path, full.message)
                    watch.stop.wait(DISK_FULL_WAIT_S)
                    continue
                failures += 1
                wait = min(self.poll_s * 2 ** (failures - 1), RETRY_MAX_S)
                if polling is None and _not_permission(exc):
                    # e.g. out of inotify watches (fs.inotify.max_user_watches), or a network
                    # file system that sends no events: scan for changes instead.
                    log.warning("watching %s: %s; polling it instead", watch.path, exc)
                    polling = True
                elif failures == 1:
                    log.exception("watching %s failed; retrying", watch.path)
                else:  # (the same again, most likely: no traceback every time)
                    log.warning("watching %s: %s; retry in %.0f s", watch.path, exc, wait)
                watch.stop.wait(wait)

    def _away(self, watch: Watch) -> bool:
        """Whether the watched folder is gone: not a folder (or not to be reached), or the
        empty folder an unmounted disk leaves, its mount point: on another device than at the
        last sync, or, before a first sync, while images stored under it say it held some."""
        try:
            st = os.stat(watch.path)
        except OSError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return True
        if st.st_dev == watch.device or not is_empty(watch.path):
            return False
        if watch.device is not None or watch.state == "missing":
            return True
        return bool(self.store.files_under(str(watch.path)))

    def _synced_folder(self, watch: Watch) -> bool:
        """Whether the watched folder is still the one synced (a folder, on the same device);
        checked at each change set and each poll interval."""
        try:
            st = os.stat(watch.path)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_dev == watch.device

    def _vanished(self, watch: Watch) -> None:
        if watch.state != "missing":
            marked = self.catalog.mark_missing(str(watch.path))
            watch.missing += len(marked)
            watch.state = "missing"
            log.warning(
                "%s is gone: %d images marked missing until it returns", watch.path, len(marked)
            )

    def _sync(self, watch: Watch) -> None:
        """Index what is new or changed under the folder, restore what came back, prune. On
        another device than at the last sync (a disk unmounted, or mounted again) what is not
        found is marked missing, never forgotten."""
        watch.state = "syncing"
        device = os.stat(watch.path).st_dev
        careful = watch.device is not None and device != watch.device
        report, listing = AddReport(), Listing()
        found = walk(watch.path, self.extensions, report, listing, allows=self.allows)
        self._place(watch, [f for f in found if self._wanted(f)], report)
        # Stored paths are resolved: those seen through a symlinked folder are under its target.
        for top in _tops({str(watch.path), *listing.tops}):
            rows = self.store.files_under(top)
            self._prune(watch, rows, unlisted=listing.unlisted, careful=careful)
        watch.device = device
        watch.synced = time.time()

    def _apply(self, watch: Watch, changes: set[tuple[Any, str]]) -> None:
        """One batch of changes: place what appeared (moves first), then forget what went."""
        from watchfiles import Change

        appeared: list[Path] = []
        gone: set[str] = set()
        report = AddReport()
        for change, raw in sorted(changes, key=lambda c: c[1]):
            path = Path(raw)
            if not nameable(path, report):  # (never stored, so never to forget either)
                continue
            if change == Change.deleted:
                # As stored: resolved (an event behind a symlinked folder names the link).
                parent, name = os.path.split(raw)
                gone.add(os.path.join(os.path.realpath(parent), name))
            elif path.is_dir():
                appeared += walk(path, self.extensions, report, allows=self.allows)
            elif path.suffix.lower() in self.extensions and path.is_file():
                appeared.append(path.resolve())
        self._place(watch, [f for f in dict.fromkeys(appeared) if self._wanted(f)], report)
        # Whatever is there again (a file saved by delete + create) or now (a folder where a
        # file was) is for _prune to tell: a file stays only while it is one.
        for top in _tops(gone):
            self._prune(watch, self.store.files_under(top))

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

    def _prune(
        self,
        watch: Watch,
        rows: list[StoredFile],
        *,
        unlisted: Iterable[str] = (),
        careful: bool = False,
    ) -> None:
        """Stored images whose file is gone: forget them if their folder is still there, mark
        them missing if the folder itself vanished (or, `careful`, in any case). A file or
        folder that cannot be checked (EACCES, EIO), or under an `unlisted` folder, is kept."""
        skip = tuple(u.rstrip("/") + "/" for u in unlisted)
        deleted: dict[int, str] = {}
        vanished: dict[int, str] = {}
        for row in rows:
            if row.path.startswith(skip) or is_file(row.path) is not False:
                continue
            folder = is_folder(os.path.dirname(row.path))
            if folder is None:
                continue
            if folder and not careful:
                deleted[row.id] = row.path
            elif not row.missing:
                vanished[row.id] = row.path
        # Checked again under the catalog's write lock: a user's add may move or re-index a row
        # between the checks above and the write.
        if deleted:
            watch.removed += len(self.catalog.drop_gone(deleted, _gone, keep=False))
        if vanished:
            watch.missing += len(self.catalog.drop_gone(vanished, _gone, keep=True))


def _not_permission(exc: Exception) -> bool:
    """An error of the watcher that polling may not have (polling stops at EACCES too)."""
    return isinstance(exc, OSError | RuntimeError) and not isinstance(exc, PermissionError)


def _gone(path: str) -> bool:
    return is_file(path) is False


def _tops(paths: Iterable[str]) -> list[str]:
    """`paths` less those below another of them, sorted."""
    tops: list[str] = []
    for path in sorted(paths):
        if not tops or not path.startswith(tops[-1].rstrip("/") + "/"):
            tops.append(path)
    return tops
