"""Files derived from stored images (comparator features, thumbnails): one cache, one rule.

A derived file is keyed by (kind, image id) and is valid for one version of the image file,
its stamp (mtime, ctime and size, as `os.stat` gives them when the file is read):
`<root>/<family>/<variant>/<image id>` starts with a small header holding that stamp, so a file
changed on disk reads as a miss, and the next write replaces it (one file per kind and id,
nothing stale left behind). The ctime is there for the copies that keep an mtime (`cp -p`,
`rsync -a`, `touch -r`, a photo renamed over another whose mtime both came from their EXIF):
no program sets it, a write or rename of the file always moves it. Writes go through a temp
file and a rename (`files.write_atomic`), so readers see a whole old file, a whole new one, or
none, without any lock. `invalidate(*ids)` drops images' files of every kind; the service
calls it with the ids the catalog removes. A file made for an image removed meanwhile (a
thumbnail or features being made while the image was removed) is dropped once written
(`alive`), and `sweep` drops those a kill -9 left. A write that fails (a full disk, a cache
folder that is not writable) is skipped: the caller has its data, made again next time;
caching must not fail the searches and thumbnails that only wanted to cache.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import disk_full
from .files import TEMP_PREFIX, write_atomic

log = logging.getLogger(__name__)

MAGIC = b"ISD2"  # bump the digit when the header changes: older files read as misses
_HEADER = struct.Struct("<4sqqq")  # magic, and the stamp of the image file the data came from
_PART = r"[a-z0-9][a-z0-9_-]{0,31}"
_KIND = re.compile(rf"^{_PART}/{_PART}$")
# The fewest bytes a directory entry takes in its folder's size (ext4: 8 + the name, in 4s).
DIRENT_BYTES = 12
SWEEP_CHUNK = 5_000  # ids asked of the store at once by `sweep`

Stamp = tuple[int, int, int]  # (st_mtime_ns, st_ctime_ns, st_size) of an image file


def stamp(st: os.stat_result) -> Stamp:
    """The version of an image file that derived data is valid for."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class DerivedFiles:
    """Derived files under `root`; `kind` is "family/variant" (e.g. "features/sift")."""

    def __init__(self, root: Path, alive: Callable[[int], bool] | None = None) -> None:
        """`alive(image_id)`: whether the image is still stored (None: not checked)."""
        self.root = root
        self.alive = alive
        self.failing = False  # the last write failed (said once until one succeeds)
        self.opened = time.time()  # temp files older than this were left by an earlier run
        root.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, image_id: int) -> Path:
        """Where the file of this kind and image lives (whether or not it exists)."""
        if not _KIND.match(kind):
            raise ValueError(f"bad kind for the derived-file cache: {kind!r}")
        return self.root / kind / str(int(image_id))

    def read(self, kind: str, image_id: int, version: Stamp) -> bytes | None:
        """The data made from this version of the image, or None (missing, stale, damaged)."""
        path = self.path(kind, image_id)
        try:
            data = path.read_bytes()
        except OSError:  # none, or none that can be read (made again, its write skipped)
            return None
        if len(data) < _HEADER.size:
            log.warning("dropping damaged cache file %s", path)
            path.unlink(missing_ok=True)
            return None
        magic, *stored = _HEADER.unpack_from(data)
        if magic != MAGIC or tuple(stored) != version:
            return None
        return data[_HEADER.size :]

    def write(self, kind: str, image_id: int, version: Stamp, data: bytes) -> None:
        """Keep `data` made from this version of the image, replacing any older one."""
        path = self.path(kind, image_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, _HEADER.pack(MAGIC, *version) + data)
        except OSError as exc:
            if not self.failing:
                said = disk_full(exc)
                why = said.message if said is not None else f"{path.parent}: {exc}"
                log.warning("derived files are not cached for now: %s", why)
            self.failing = True
            return
        self.failing = False
        if self.alive is not None and not self.alive(image_id):
            # Removed while this was made: its invalidation may have run before the write.
            path.unlink(missing_ok=True)

    def drop(self, kind: str, image_id: int) -> None:
        """Forget one file (e.g. one found unreadable)."""
        self.path(kind, image_id).unlink(missing_ok=True)

    def invalidate(self, *image_ids: int) -> None:
        """Forget every derived file of these images (they were removed). The kinds are
        listed once a call (a removed folder of 10,000 images is one call), and a kind's
        folder is read instead of trying each name where it holds fewer files than that."""
        names = {str(int(i)) for i in image_ids}
        if not names:  # a write that removed nothing (an add)
            return
        for family in _subdirs(self.root):
            for kind in _subdirs(family):
                folder = str(kind)
                there = names
                if len(names) > _entries_at_most(folder):
                    there = names.intersection(os.listdir(folder))
                for name in there:  # os.unlink on a string: 3-7 us a missing file, Path's 10
                    try:
                        os.unlink(os.path.join(folder, name))
                    except FileNotFoundError:
                        pass

    def sweep(self, stored: Callable[[Sequence[int]], Iterable[int]], stop: threading.Event) -> int:
        """Drop what a kill -9 left: the files of images the store no longer has (`stored(ids)`:
        those of `ids` it has; killed between a removal's commit and its invalidation) and
        temp files of writes an earlier run did not finish; how many. Run once a start, in the
        background (a folder may hold millions of files); stops early once `stop` is set."""
        dropped = 0
        for family in _subdirs(self.root):
            for kind in _subdirs(family):
                with os.scandir(kind) as entries:  # a batch at a time
                    while chunk := list(itertools.islice(entries, SWEEP_CHUNK)):
                        if stop.is_set():
                            return dropped
                        dropped += self._sweep(kind, chunk, stored)
        if dropped:
            log.info("removed %d cached files of images no longer stored", dropped)
        return dropped

    def _sweep(
        self,
        kind: Path,
        chunk: list[os.DirEntry[str]],
        stored: Callable[[Sequence[int]], Iterable[int]],
    ) -> int:
        ids = {int(e.name) for e in chunk if e.name.isdigit()}
        gone = [kind / str(i) for i in ids.difference(stored(sorted(ids)))]
        for entry in chunk:
            if entry.name.startswith(TEMP_PREFIX) and _older(entry, self.opened):
                log.warning("removing %s left by an interrupted cache write", entry.path)
                gone.append(Path(entry.path))
        for path in gone:
            path.unlink(missing_ok=True)
        return len(gone)


def _older(entry: os.DirEntry[str], than: float) -> bool:
    try:
        return entry.stat().st_mtime < than
    except OSError:
        return False


def _entries_at_most(folder: str) -> int:
    """A folder's entries at most, from its size: on ext4 and xfs an entry takes at least
    DIRENT_BYTES of it (tmpfs counts 20). Where a filesystem counts fewer (btrfs: twice the
    name's length) a big folder may be read where trying each name was quicker: slower, never
    wrong."""
    try:
        return os.stat(folder).st_size // DIRENT_BYTES
    except OSError:
        return 0


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
