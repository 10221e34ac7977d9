"""The Comparator protocol and the values it works on: a working Picture and a Score."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np
from PIL import Image

from ..images import decode, read_file

log = logging.getLogger(__name__)

# Long side of the image every comparator works on: enough detail for SIFT to find a few
# hundred keypoints in a photo, small enough that one comparison stays in the tens of ms.
WORKING_SIZE = 640

_EMPTY: Mapping[str, Any] = MappingProxyType({})
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Picture:
    """A decoded image at working size: `rgb` uint8 HxWx3 and `gray` uint8 HxW (read-only).

    `shared(key, compute)` keeps one result per key for all comparators of this picture, so
    `sift` and `verify` extract SIFT keypoints once per image.
    """

    rgb: np.ndarray
    gray: np.ndarray
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def shared(self, key: str, compute: Callable[[Picture], T]) -> T:
        """`compute(self)` once per key; a second caller waits for the first one's result."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = compute(self)
            out: T = self._shared[key]
            return out

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> Picture:
        """Build from a uint8 HxWx3 RGB array, reducing its long side to WORKING_SIZE."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise ValueError(f"need a non-empty uint8 HxWx3 array, got {rgb.dtype} {rgb.shape}")
        height, width = rgb.shape[:2]
        scale = WORKING_SIZE / max(height, width)
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(rgb)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rgb.flags.writeable = False
        gray.flags.writeable = False
        return cls(rgb, gray)

    @classmethod
    def from_pil(cls, img: Image.Image) -> Picture:
        """Build from a Pillow image (normally RGB already, from `images.decode`)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        return cls.from_rgb(np.array(img, dtype=np.uint8))


def load_picture(path: Path, *, max_file_bytes: int, max_pixels: int) -> Picture:
    """Read and decode an image file into a working Picture (raises ImgSearchError subclasses)."""
    return read_picture(path, max_file_bytes=max_file_bytes, max_pixels=max_pixels)[0]


def read_picture(
    path: Path, *, max_file_bytes: int, max_pixels: int
) -> tuple[Picture, os.stat_result]:
    """The working Picture of an image file and the file's stat as it was read."""
    data, st = read_file(path, max_file_bytes)
    # decode() keeps the *shorter* side >= min_side (JPEG draft picks the smallest scale that
    # does), so asking for WORKING_SIZE guarantees the long side can still reach it.
    decoded = decode(data, min_side=WORKING_SIZE, max_pixels=max_pixels)
    return Picture.from_pil(decoded.image), st


@dataclass(frozen=True)
class FeatureError:
    """In place of a comparator's features where its `features` raised: it scores nothing."""

    message: str


@dataclass(frozen=True)
class Score:
    """One comparison: the comparator's own `raw` measure and a `score` in 0..1 (1 = same)."""

    raw: float
    score: float
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def as_json(self) -> dict[str, Any]:
        """`{"raw": ..., "score": ..., **extra}` with finite JSON numbers, never strings."""
        out: dict[str, Any] = {"raw": _number(self.raw), "score": _number(self.score)}
        for key, value in self.extra.items():
            out[key] = _number(value) if isinstance(value, float | np.floating) else _plain(value)
        return out


def _number(value: float | np.floating) -> float:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else 0.0


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so json.dumps never meets them."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@runtime_checkable
class Comparator(Protocol):
    """Compares two pictures by one method; called from worker threads, so it keeps no state.

    Optional attribute: `locates_parts = True` on a comparator that can confirm a match of a
    part of an image (an inset, a crop); searches then also score the nearest images of
    regions of the query, which costs a few more embeddings per search.
    """

    name: str
    description: str
    raw_meaning: str

    def features(self, picture: Picture) -> Any:
        """Per-image features: picklable (numpy arrays, dataclasses), cacheable on disk."""
        ...

    def compare(self, query: Any, candidate: Any) -> Score:
        """Score a candidate's features against the query's; never raises on odd images."""
        ...


def saturate(value: float, scale: float) -> float:
    """Map a count-like value >= 0 to 0..1: 1 - exp(-value / scale)."""
    return 1.0 - math.exp(-max(0.0, value) / scale)


def checked(name: str, result: object) -> Score | None:
    """A comparator's result as the fusion may use it: a Score with a finite `score` in 0..1
    (a plugin's 7.0 would outweigh every other comparator), or None (logged) for what is not."""
    if not isinstance(result, Score):
        log.error("comparator %s returned %r, not a Score: not used", name, type(result).__name__)
        return None
    try:
        score = float(result.score)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        log.error("comparator %s returned the score %r: not used", name, result.score)
        return None
    if not 0.0 <= score <= 1.0:
        log.warning("comparator %s returned the score %s outside 0..1: clipped", name, score)
    try:
        raw = float(result.raw)
    except (TypeError, ValueError):
        log.error("comparator %s returned the raw measure %r: not used", name, result.raw)
        return None
    extra = dict(result.extra) if isinstance(result.extra, Mapping) else {}
    for key, value in list(extra.items()):
        if not isinstance(key, str) or not _json_value(value):
            log.error("comparator %s returned %r: %r, not a JSON value: left out", name, key, value)
            del extra[key]
    return Score(raw, clamp01(score), extra)


def _json_value(value: Any) -> bool:
    """Whether a comparator's extra value goes into an answer as it is (finite numbers)."""
    if isinstance(value, float | np.floating):
        return True  # (as_json writes a non-finite one as 0.0)
    try:
        json.dumps(_plain(value), allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def clamp01(value: float) -> float:
    """Clip to 0..1, mapping NaN to 0."""
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0
