"""JPEG thumbnails of indexed images, kept in the derived-file cache. No HTTP here.

A thumbnail is kind "thumbnails/<size>" of the cache (`derived.py`): valid for one version of
the image file, so a file changed on disk (or re-indexed) gets a new thumbnail that replaces
the old one, and a removed image loses it with its other derived files.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image

from .derived import DerivedFiles, stamp
from .images import decode, read_file

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256
JPEG_QUALITY = 82


class ThumbnailCache:
    """Makes and keeps thumbnails (longer side at most `size` px) in the derived-file cache."""

    def __init__(
        self,
        files: DerivedFiles | Path,
        max_file_bytes: int,
        max_pixels: int,
        size: int = THUMBNAIL_SIZE,
    ) -> None:
        self.files = files if isinstance(files, DerivedFiles) else DerivedFiles(files)
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.size = size

    @property
    def kind(self) -> str:
        return f"thumbnails/{self.size}"

    def get(self, image_id: int, path: Path) -> bytes:
        """The JPEG thumbnail of the file at `path` (stored as `image_id`), made on a miss.

        Raises the errors of `read_file`/`decode` (NotFound, NotAnImage, PayloadTooLarge).
        """
        try:
            st = os.stat(path)
        except OSError:
            st = None  # read_file below raises the right error
        if st is not None:
            cached = self.files.read(self.kind, image_id, stamp(st))
            if cached is not None:
                return cached
        data, st = read_file(path, self.max_file_bytes)
        jpeg = self.make(data)
        self.files.write(self.kind, image_id, stamp(st), jpeg)
        return jpeg

    def make(self, data: bytes) -> bytes:
        """A JPEG thumbnail of image bytes, EXIF-rotated, transparency on white."""
        decoded = decode(data, min_side=self.size, max_pixels=self.max_pixels)
        img = decoded.image
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return buf.getvalue()

    def cached_path(self, image_id: int) -> Path:
        """Where the thumbnail of this image lives (whether or not it exists yet)."""
        return self.files.path(self.kind, image_id)

    def invalidate(self, image_id: int) -> None:
        """Forget the image's derived files (its thumbnail, and its other kinds too)."""
        self.files.invalidate(image_id)
