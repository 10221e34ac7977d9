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

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .errors import BadRequest, ConfigError, NotFound, disk_full
from .ingest import AddReport, Ingester, Listing, nameable, walk
from .ingest.folders import in_real_folder, is_empty, is_file, is_folder
from .store import StoredFile
from .watched import Watch, tops_of, within

log = logging.getLogger(__name__)

# After a write that found the disk full, a folder is synced again (walked whole) this much later.
DISK_FULL_WAIT_S = 60.0
# A watch that keeps failing retries (a sync, then the watcher) after poll_s, doubling up to this.
RETRY_MAX_S = 60.0
# The longest watchfiles waits for changes before it answers (with none): it starts its watcher
# at the first answer asked for, and the sync waits for that first answer.
TICK_MS = 100


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
        # What `watches()` reads, replaced whole under the lock: GET /watch lists the folders on
        # the event loop, and the lock is held over SQLite writes that can wait for others.
        self._listed: tuple[Watch, ...] = ()
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
            self._listed = tuple(self._watches.values())
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
            self._listed = tuple(self._watches.values())
        self._stop(watch)
        return watch

    def watches(self) -> list[Watch]:
        """The watched folders, without the lock (that adding or removing a watch holds over a
        write): GET /watch reads them on the event loop."""
        return list(self._listed)

    def count(self) -> int:
        """How many folders are watched, without the lock: /stats reads it on the event loop."""
        return len(self._listed)

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
        """Sync, then apply change sets; wait while the folder is gone; never die. The watcher
        is started before the sync: a sync can take hours (or wait for another job's run), and
        what changes meanwhile is buffered by the watcher and applied after it."""
        import watchfiles

        polling: bool | None = None  # None: watchfiles decides (WATCHFILES_FORCE_POLLING, WSL)
        failures = 0  # in a row: retries back off, and only the first logs a traceback
        while not watch.stop.is_set():
            try:
                if self._away(watch):
                    self._vanished(watch)
                    watch.stop.wait(self.poll_s)
                    continue
                # Taken before the watcher starts: a folder put in this one's place meanwhile
                # is found another at the first check.
                st = os.stat(watch.path)
                identity = st.st_dev, st.st_ino
                change_sets = watchfiles.watch(
                    watch.path,
                    stop_event=watch.stop,
                    debounce=self.debounce_ms,
                    rust_timeout=TICK_MS,  # (the folder is checked every poll_s all the same)
                    yield_on_timeout=True,
                    raise_interrupt=False,
                    force_polling=polling,
                    # An unreadable subfolder is left out, not a failure of the whole watch
                    # (the syncs keep its images: they cannot be checked).
                    ignore_permission_denied=True,
                )
                with contextlib.closing(change_sets):
                    # watchfiles starts its watcher at the first next(), which answers within
                    # TICK_MS: from then on changes are kept. What it answers happened before
                    # the sync's walk, which sees it; but the folder itself deleted meanwhile
                    # (and one of its name made: its inode may be the old one's) is for the
                    # next turn, with a watcher on the new folder.
                    first = next(change_sets, None) or set()
                    if watch.stop.is_set() or self._away(watch) or self._replaced(watch, first):
                        continue  # (gone meanwhile: the next turn marks it missing)
                    self._sync(watch, identity)
                    watch.state = "watching"
                    checked = time.monotonic()
                    for changes in change_sets:
                        failures = 0
                        if changes or time.monotonic() - checked >= self.poll_s:
                            checked = time.monotonic()
                            if not self._synced_folder(watch, changes):
                                break  # unmounted, moved away, replaced: the next turn tells
                        if changes and not self._apply(watch, changes):
                            break  # a symlinked folder may have gone: a sync tells
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

    def _synced_folder(self, watch: Watch, changes: set[tuple[Any, str]]) -> bool:
        """Whether the watched folder is still the one synced (device and inode), checked at
        each change set and every poll_s. Another put in its place (`mv photos photos.old &&
        mkdir photos`) is not: the watcher follows the old one (inotify watches inodes). Nor
        is one after the watcher reported the folder deleted (ext4 reuses an inode at once)."""
        if self._replaced(watch, changes):
            return False
        try:
            st = os.stat(watch.path)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (watch.device, watch.inode)

    def _replaced(self, watch: Watch, changes: set[tuple[Any, str]]) -> bool:
        """Whether the watcher reported the watched folder itself deleted; the next sync is
        then careful (what it does not find is marked missing, not forgotten)."""
        from watchfiles import Change

        if (Change.deleted, str(watch.path)) not in changes:
            return False
        watch.inode = None
        return True

    def _vanished(self, watch: Watch) -> None:
        if watch.state != "missing":
            marked = self.catalog.mark_missing(str(watch.path))
            watch.missing += len(marked)
            watch.state = "missing"
            log.warning(
                "%s is gone: %d images marked missing until it returns", watch.path, len(marked)
            )

    def _sync(self, watch: Watch, identity: tuple[int, int]) -> None:
        """Index what is new or changed under the folder, restore what came back, prune. In
        another folder than at the last sync (`identity`: device and inode; a disk unmounted or
        mounted again, a folder moved away and another put in its place) what is not found is
        marked missing, never forgotten: it comes back should the old folder return."""
        watch.state = "syncing"
        careful = watch.device is not None and identity != (watch.device, watch.inode)
        report, listing = AddReport(), Listing()
        found = walk(watch.path, self.extensions, report, listing, allows=self.allows)
        self._place(watch, [f for f in found if self._wanted(f)], report)
        # Stored paths are resolved: those seen through a symlinked folder are under its target.
        reached = tops_of({str(watch.path), *listing.tops})
        for top in reached:
            rows = self.store.files_under(top)
            self._prune(watch, rows, unlisted=listing.unlisted, careful=careful)
        self._unreached(watch, reached, listing.unlisted)
        watch.links = frozenset(listing.links)
        watch.device, watch.inode = identity
        watch.synced = time.time()

    def _unreached(self, watch: Watch, reached: list[str], unlisted: set[str]) -> None:
        """Symlinked folders the last sync followed and this one did not (the link removed or
        moved out): their images are marked missing, as a vanished subfolder's, else no prune
        looked there again. Not while a folder could not be listed (the link may be in it),
        nor where another watch looks."""
        old = [top for top in watch.tops if not within(top, reached)]
        watch.tops = frozenset(reached + old if unlisted else reached)
        others = [t for w in self.watches() if w is not watch for t in (str(w.path), *w.tops)]
        for top in [] if unlisted else old:
            rows = {
                r.id: r.path
                for r in self.store.files_under(top)
                if not r.missing and not within(r.path, reached + others)
            }
            if rows and not within(top, others):  # (each goes, its file there or not)
                watch.missing += len(self.catalog.drop_gone(rows, lambda _: True, keep=True))

    def _apply(self, watch: Watch, changes: set[tuple[Any, str]]) -> bool:
        """One batch of changes: place what appeared (moves first), then forget what went.
        False where a symlinked folder the watch follows may have gone (its link deleted, or
        a folder above it): a sync tells."""
        from watchfiles import Change

        appeared: list[Path] = []
        gone: set[str] = set()
        report, listing = AddReport(), Listing()
        for change, raw in sorted(changes, key=lambda c: c[1]):
            path = Path(raw)
            if not nameable(path, report):  # (never stored, so never to forget either)
                continue
            if change == Change.deleted:
                # As stored: resolved (an event behind a symlinked folder names the link).
                gone.add(in_real_folder(raw))
            elif path.is_dir():
                if os.path.islink(raw):  # (the walk's root: it names no link of its own)
                    listing.links.add(in_real_folder(raw))
                appeared += walk(path, self.extensions, report, listing, allows=self.allows)
            elif path.suffix.lower() in self.extensions and path.is_file():
                appeared.append(path.resolve())
        self._place(watch, [f for f in dict.fromkeys(appeared) if self._wanted(f)], report)
        watch.tops = frozenset(tops_of({*watch.tops, *listing.tops}))  # (a symlink added)
        watch.links = watch.links | listing.links
        # Whatever is there again (a file saved by delete + create) or now (a folder where a
        # file was) is for _prune to tell: a file stays only while it is one.
        for top in tops_of(gone):
            self._prune(watch, self.store.files_under(top))
        # A followed link deleted (or a folder above one): a sync tells what is reached now.
        # Only then: an atomic save (a temp file renamed) is a deletion too, of the temp name.
        return not any(within(link, [top]) for top in gone for link in watch.links)

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
