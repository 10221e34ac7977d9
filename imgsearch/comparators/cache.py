"""Comparator features of stored images, kept in the derived-file cache (`derived.py`).

This module only turns features into bytes and back, refusing to unpickle anything but numpy
arrays and the comparators' own feature classes; where and for how long they are kept is the
derived-file cache's one rule (kind, image id, file mtime).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..derived import DerivedFiles
from ..errors import Forbidden
from ..security import OUTSIDE
from .base import Comparator, load_picture

log = logging.getLogger(__name__)

# Bump when the pickled layout changes: files of another version read as misses.
CACHE_VERSION = 2
FAMILY = "features"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# What a cache file may reconstruct: numpy arrays and dtypes, and the comparators' own
# feature classes. Anything else (a file planted in the data directory) is refused.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("builtins", "tuple"),
        ("builtins", "list"),
        ("builtins", "dict"),
    }
)
_ALLOWED_MODULE = re.compile(r"^imgsearch\.comparators\.[a-z_]+$")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        ours = bool(_ALLOWED_MODULE.match(module)) and name[:1].isupper()
        allowed = ours or (module, name) in _ALLOWED_GLOBALS
        if not allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the cache")
        return super().find_class(module, name)


class FeatureCache:
    """Features stored per comparator and image, valid for one mtime of the image file."""

    def __init__(
        self, files: DerivedFiles | Path, allows: Callable[[Path], bool] | None = None
    ) -> None:
        self.files = files if isinstance(files, DerivedFiles) else DerivedFiles(files)
        # Which resolved paths may be read (PathPolicy.allows): every stored image read for
        # its features (verify re-ranking, evidence, precompute, duplicates) comes through
        # here, so a row stored before its roots narrowed, or through a symlink that now
        # leads out of them, is refused where it is read. None: any.
        self.allows = allows
        self.directory = self.files.root / FAMILY  # one sub-folder per comparator

    def get(self, name: str, image_id: int, mtime_ns: int) -> Any | None:
        """The cached features, or None when missing, stale (other mtime) or unreadable."""
        data = self.files.read(_kind(name), image_id, mtime_ns)
        if data is None:
            return None
        try:
            version, features = _Unpickler(io.BytesIO(data)).load()
        except Exception as exc:  # a damaged file is a miss, and is removed
            log.warning(
                "dropping unreadable cache file %s: %s", self.files.path(_kind(name), image_id), exc
            )
            self.files.drop(_kind(name), image_id)
            return None
        return features if version == CACHE_VERSION else None

    def put(self, name: str, image_id: int, mtime_ns: int, features: Any) -> None:
        """Store features for this image version, replacing any older entry."""
        payload = pickle.dumps((CACHE_VERSION, features), pickle.HIGHEST_PROTOCOL)
        self.files.write(_kind(name), image_id, mtime_ns, payload)

    def of_file(
        self,
        comparators: Sequence[Comparator],
        image_id: int,
        path: Path,
        mtime_ns: int,
        *,
        max_file_bytes: int,
        max_pixels: int,
    ) -> list[Any]:
        """Each comparator's features of a stored image: cached, or computed once from the file
        and cached (raises ImgSearchError subclasses when the file cannot be read)."""
        cached = [self.get(c.name, image_id, mtime_ns) for c in comparators]
        if all(f is not None for f in cached):
            return cached
        if self.allows is not None and not self.allows(_resolved(path)):
            raise Forbidden(f"{path}: {OUTSIDE}")
        picture = load_picture(path, max_file_bytes=max_file_bytes, max_pixels=max_pixels)
        out = []
        for comparator, hit in zip(comparators, cached, strict=True):
            if hit is None:
                hit = comparator.features(picture)
                self.put(comparator.name, image_id, mtime_ns, hit)
            out.append(hit)
        return out

    def invalidate(self, image_id: int) -> None:
        """Forget the image's derived files (its features, and its other kinds too)."""
        self.files.invalidate(image_id)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: what it names, unresolved
        return Path(os.path.normpath(path))


def _kind(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"bad comparator name for the cache: {name!r}")
    return f"{FAMILY}/{name}"
