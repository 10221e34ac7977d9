"""Comparator features of stored images, kept in the derived-file cache (`derived.py`).

This module only turns features into bytes and back, refusing to unpickle anything but numpy
arrays and scalars, plain values and the built-in comparators' feature classes; where and for
how long they are kept is the derived-file cache's one rule (kind, image id, the file's stamp).
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

from ..derived import DerivedFiles, Stamp, stamp
from ..errors import Forbidden
from ..security import OUTSIDE
from .base import Comparator, FeatureError, read_picture

log = logging.getLogger(__name__)

# Bump when the pickled layout changes: files of another version read as misses.
CACHE_VERSION = 2
FAMILY = "features"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# What a cache file may reconstruct: numpy arrays, dtypes and scalars, plain containers, and
# the built-in comparators' feature classes, each named exactly (a dotted name would reach any
# attribute of an allowed one: `Path.write_text`). Anything else (a file planted in the data
# directory) is refused. A plugin's features of its own class are recomputed, never cached.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("builtins", "tuple"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("imgsearch.comparators.keypoints", "Keypoints"),
        ("imgsearch.comparators.verify", "VerifyFeatures"),
    }
)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the cache")
        return super().find_class(module, name)


class FeatureCache:
    """Features stored per comparator and image, valid for one version of the image file."""

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
        self.uncached: set[str] = set()  # comparators whose features cannot be cached (said once)

    def get(self, name: str, image_id: int, version: Stamp) -> Any | None:
        """The cached features, or None when missing, stale (another version) or unreadable."""
        data = self.files.read(_kind(name), image_id, version)
        if data is None:
            return None
        try:
            layout, features = _Unpickler(io.BytesIO(data)).load()
        except Exception as exc:  # a damaged file is a miss, and is removed
            log.warning(
                "dropping unreadable cache file %s: %s", self.files.path(_kind(name), image_id), exc
            )
            self.files.drop(_kind(name), image_id)
            return None
        return features if layout == CACHE_VERSION else None

    def put(self, name: str, image_id: int, version: Stamp, features: Any) -> None:
        """Store features for this image version, replacing any older entry."""
        payload = pickle.dumps((CACHE_VERSION, features), pickle.HIGHEST_PROTOCOL)
        try:  # what get() would refuse is not kept (a plugin's own class): made each time
            _Unpickler(io.BytesIO(payload)).load()
        except pickle.UnpicklingError as exc:
            if name not in self.uncached:
                log.info("%s features are not cached: %s", name, exc)
                self.uncached.add(name)
            return
        self.files.write(_kind(name), image_id, version, payload)

    def of_file(
        self,
        comparators: Sequence[Comparator],
        image_id: int,
        path: Path,
        *,
        max_file_bytes: int,
        max_pixels: int,
    ) -> list[Any]:
        """Each comparator's features of a stored image as its file is now: cached, or
        computed once from the file and cached (raises ImgSearchError subclasses when the file
        cannot be read: a file gone or changed since it was cached is never answered from the
        cache). A comparator whose `features` fails has a FeatureError in its place."""
        try:
            version: Stamp | None = stamp(os.stat(path))
        except OSError:
            version = None  # read below, for the error that says why
        cached = [
            None if version is None else self.get(c.name, image_id, version) for c in comparators
        ]
        if all(f is not None for f in cached):
            return cached
        if self.allows is not None and not self.allows(_resolved(path)):
            raise Forbidden(f"{path}: {OUTSIDE}")
        picture, st = read_picture(path, max_file_bytes=max_file_bytes, max_pixels=max_pixels)
        out = []
        for comparator, hit in zip(comparators, cached, strict=True):
            if hit is None:
                try:
                    hit = comparator.features(picture)
                except Exception as exc:  # one comparator's failure leaves the others' features
                    log.exception("%s features of %s failed", comparator.name, path)
                    hit = FeatureError(f"{comparator.name}: {exc}")
                else:
                    self.put(comparator.name, image_id, stamp(st), hit)
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
