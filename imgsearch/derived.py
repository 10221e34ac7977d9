"""Files derived from stored images (comparator features, thumbnails): one cache, one rule.

A derived file is keyed by (kind, image id) and is valid for one version of the image file, its
mtime: `<root>/<family>/<variant>/<image id>` starts with a small header holding that mtime, so a
file changed on disk reads as a miss, and the next write replaces it (one file per kind and id,
nothing stale left behind). Writes go through a temp file and a rename (`files.write_atomic`),
so readers see a whole old file, a whole new one, or none, without any lock. `invalidate(*ids)`
drops images' files of every kind; the service calls it with the ids the catalog removes.
A write that finds the disk full is skipped (the caller has its data; it is made again next
time): a full disk must not fail searches and thumbnails that only wanted to cache.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path

from .errors import disk_full
from .files import TEMP_PREFIX, write_atomic

log = logging.getLogger(__name__)

MAGIC = b"ISD1"  # bump the digit when the header changes: older files read as misses
_HEADER = struct.Struct("<4sq")  # magic, mtime_ns of the image file the data was made from
_PART = r"[a-z0-9][a-z0-9_-]{0,31}"
_KIND = re.compile(rf"^{_PART}/{_PART}$")
# The fewest bytes a directory entry takes in its folder's size (ext4: 8 + the name, in 4s).
DIRENT_BYTES = 12


class DerivedFiles:
    """Derived files under `root`; `kind` is "family/variant" (e.g. "features/sift")."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.full = False  # the last write found the disk full (said once until one succeeds)
        root.mkdir(parents=True, exist_ok=True)
        for stray in root.glob(f"*/*/{TEMP_PREFIX}*"):
            log.warning("removing %s left by an interrupted cache write", stray)
            stray.unlink(missing_ok=True)

    def path(self, kind: str, image_id: int) -> Path:
        """Where the file of this kind and image lives (whether or not it exists)."""
        if not _KIND.match(kind):
            raise ValueError(f"bad kind for the derived-file cache: {kind!r}")
        return self.root / kind / str(int(image_id))

    def read(self, kind: str, image_id: int, mtime_ns: int) -> bytes | None:
        """The data made from this version of the image, or None (missing, stale, damaged)."""
        path = self.path(kind, image_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < _HEADER.size:
            log.warning("dropping damaged cache file %s", path)
            path.unlink(missing_ok=True)
            return None
        magic, stored = _HEADER.unpack_from(data)
        if magic != MAGIC or stored != mtime_ns:
            return None
        return data[_HEADER.size :]

    def write(self, kind: str, image_id: int, mtime_ns: int, data: bytes) -> None:
        """Keep `data` made from this version of the image, replacing any older one."""
        path = self.path(kind, image_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, _HEADER.pack(MAGIC, int(mtime_ns)) + data)
        except OSError as exc:
            if (full := disk_full(exc)) is None:
                raise
            if not self.full:
                log.warning("derived files are not cached for now: %s", full.message)
            self.full = True
            return
        self.full = False

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
