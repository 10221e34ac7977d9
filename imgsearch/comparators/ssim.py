"""Structural similarity (SSIM) of grayscale thumbnails at one common size."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from .base import Picture, Score, clamp01

log = logging.getLogger(__name__)

_structural_similarity = cast(Callable[..., float], structural_similarity)  # untyped upstream

# Both images are squashed to this square: SSIM needs equal shapes, and 128 px keeps the
# comparison about 2 ms while still seeing edges. Aspect ratio is deliberately ignored
# (a resized copy with a slightly different aspect still lines up).
SSIM_SIZE = 128


class SsimComparator:
    """Mean SSIM of the two pictures' grayscale thumbnails."""

    name = "ssim"
    description = "Structural similarity of grayscale thumbnails; needs the same framing."
    raw_meaning = "mean SSIM, -1 to 1; higher is more similar"

    def features(self, picture: Picture) -> np.ndarray:
        size = (SSIM_SIZE, SSIM_SIZE)
        interpolation = cv2.INTER_AREA if min(picture.gray.shape) >= SSIM_SIZE else cv2.INTER_LINEAR
        return cv2.resize(picture.gray, size, interpolation=interpolation)

    def compare(self, query: np.ndarray, candidate: np.ndarray) -> Score:
        raw = float(_structural_similarity(query, candidate, data_range=255))
        raw = raw if np.isfinite(raw) else 0.0
        return Score(raw, clamp01(raw))
