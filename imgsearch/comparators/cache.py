"""On-disk cache of comparator features, keyed by comparator, image id and file mtime."""

from __future__ import annotations

import io
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import TEMP_PREFIX, write_atomic
from .base import Comparator, load_picture

log = logging.getLogger(__name__)

# Bump when the file layout changes: files of another version read as misses.
CACHE_VERSION = 1
SUFFIX = ".pkl"
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
    """Features stored as `<directory>/<comparator>/<image id>.pkl`, tagged with the mtime.

    Thread-safe without locks: every write goes to a fresh temp file renamed into place
    (os.replace is atomic), so a reader sees a whole old file, a whole new one, or none.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for stray in directory.glob(f"*/{TEMP_PREFIX}*"):
            log.warning("removing %s left by an interrupted cache write", stray)
            stray.unlink(missing_ok=True)

    def get(self, name: str, image_id: int, mtime_ns: int) -> Any | None:
        """The cached features, or None when missing, stale (other mtime) or unreadable."""
        path = self._path(name, image_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            version, stored_mtime, features = _Unpickler(io.BytesIO(data)).load()
        except Exception as exc:  # a damaged file is a miss, and is removed
            log.warning("dropping unreadable cache file %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None
        if version != CACHE_VERSION or stored_mtime != mtime_ns:
            return None
        return features

    def put(self, name: str, image_id: int, mtime_ns: int, features: Any) -> None:
        """Store features for this image version, replacing any older entry."""
        path = self._path(name, image_id)
        path.parent.mkdir(exist_ok=True)
        payload = pickle.dumps((CACHE_VERSION, mtime_ns, features), pickle.HIGHEST_PROTOCOL)
        write_atomic(path, payload)

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
        picture = load_picture(path, max_file_bytes=max_file_bytes, max_pixels=max_pixels)
        out = []
        for comparator, hit in zip(comparators, cached, strict=True):
            if hit is None:
                hit = comparator.features(picture)
                self.put(comparator.name, image_id, mtime_ns, hit)
            out.append(hit)
        return out

    def invalidate(self, image_id: int) -> None:
        """Forget the image's features for every comparator."""
        for sub in self.directory.iterdir():
            if sub.is_dir():
                (sub / f"{int(image_id)}{SUFFIX}").unlink(missing_ok=True)

    def _path(self, name: str, image_id: int) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad comparator name for the cache: {name!r}")
        return self.directory / name / f"{int(image_id)}{SUFFIX}"
