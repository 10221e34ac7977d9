"""Files derived from stored images (comparator features, thumbnails): one cache, one rule.

A derived file is keyed by (kind, image id) and is valid for one version of the image file, its
mtime: `<root>/<family>/<variant>/<image id>` starts with a small header holding that mtime, so a
file changed on disk reads as a miss, and the next write replaces it (one file per kind and id,
nothing stale left behind). Writes go through a temp file and a rename (`files.write_atomic`),
so readers see a whole old file, a whole new one, or none, without any lock. `invalidate(id)`
drops an image's files of every kind; the service calls it for the ids the catalog removes.
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

from .files import TEMP_PREFIX, write_atomic

log = logging.getLogger(__name__)

MAGIC = b"ISD1"  # bump the digit when the header changes: older files read as misses
_HEADER = struct.Struct("<4sq")  # magic, mtime_ns of the image file the data was made from
_PART = r"[a-z0-9][a-z0-9_-]{0,31}"
_KIND = re.compile(rf"^{_PART}/{_PART}$")


class DerivedFiles:
    """Derived files under `root`; `kind` is "family/variant" (e.g. "features/sift")."""

    def __init__(self, root: Path) -> None:
        self.root = root
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
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, _HEADER.pack(MAGIC, int(mtime_ns)) + data)

    def drop(self, kind: str, image_id: int) -> None:
        """Forget one file (e.g. one found unreadable)."""
        self.path(kind, image_id).unlink(missing_ok=True)

    def invalidate(self, image_id: int) -> None:
        """Forget every derived file of an image (it was removed)."""
        name = str(int(image_id))
        for family in _subdirs(self.root):
            for kind in _subdirs(family):
                (kind / name).unlink(missing_ok=True)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
