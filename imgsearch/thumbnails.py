"""JPEG thumbnails of indexed images, cached on disk by image id and file version. No HTTP here.

A cache file is `<directory>/<image id>-<mtime_ns>-<size>.jpg`: a file changed on disk (or
re-indexed) has another mtime, so it gets a new thumbnail and the old one is deleted.
Writes go to a temp file renamed into place, so readers never see half a thumbnail.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .files import write_atomic
from .images import decode, read_file

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256
JPEG_QUALITY = 82
SUFFIX = ".jpg"


@dataclass(frozen=True)
class ThumbnailCache:
    """Makes and keeps thumbnails (longer side at most `size` px) under `directory`."""

    directory: Path
    max_file_bytes: int
    max_pixels: int
    size: int = THUMBNAIL_SIZE

    def get(self, image_id: int, path: Path) -> bytes:
        """The JPEG thumbnail of the file at `path` (stored as `image_id`), made on a miss.

        Raises the errors of `read_file`/`decode` (NotFound, NotAnImage, PayloadTooLarge).
        """
        try:
            st = os.stat(path)
        except OSError:
            st = None  # read_file below raises the right error
        if st is not None:
            cached = self._path(image_id, st.st_mtime_ns)
            try:
                return cached.read_bytes()
            except FileNotFoundError:
                pass
        data, st = read_file(path, self.max_file_bytes)
        jpeg = self.make(data)
        self._store(image_id, st.st_mtime_ns, jpeg)
        return jpeg

    def make(self, data: bytes) -> bytes:
        """A JPEG thumbnail of image bytes, EXIF-rotated, transparency on white."""
        decoded = decode(data, min_side=self.size, max_pixels=self.max_pixels)
        img = decoded.image
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return buf.getvalue()

    def cached_path(self, image_id: int, mtime_ns: int) -> Path:
        """Where the thumbnail of this image version lives (whether or not it exists yet)."""
        return self._path(image_id, mtime_ns)

    def invalidate(self, image_id: int) -> None:
        """Forget every thumbnail of an image (it was removed)."""
        for old in self.directory.glob(f"{int(image_id)}-*{SUFFIX}"):
            old.unlink(missing_ok=True)

    def _path(self, image_id: int, mtime_ns: int) -> Path:
        return self.directory / f"{int(image_id)}-{int(mtime_ns)}-{self.size}{SUFFIX}"

    def _store(self, image_id: int, mtime_ns: int, jpeg: bytes) -> None:
        target = self._path(image_id, mtime_ns)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(target, jpeg)
        for old in self.directory.glob(f"{int(image_id)}-*{SUFFIX}"):
            if old != target:  # an older version of the same image
                old.unlink(missing_ok=True)
