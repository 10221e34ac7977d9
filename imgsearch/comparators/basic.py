"""Template matching: normalised cross-correlation of grayscale thumbnails, crop-tolerant."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import Picture, Score, clamp01

log = logging.getLogger(__name__)

# Long side of the thumbnail matched. Small on purpose: correlation wants the overall
# layout, not texture, and a 128 px thumbnail makes the sliding search cost under a ms.
THUMB_SIZE = 128
# Besides the whole-frame comparison, each image is shrunk to these fractions of the other
# and slid across it, so a crop (or an inset) is found at about its own scale.
CROP_SCALES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
# Templates smaller than this carry too little to correlate meaningfully.
MIN_TEMPLATE_SIDE = 12
# Standard deviation (grey levels) under which a thumbnail counts as flat: correlation is
# undefined there, so the raw value is 0.
FLAT_STD = 1.0


class TemplateComparator:
    """Best TM_CCOEFF_NORMED over the whole frame and a few crop scales."""

    name = "basic"
    description = "Template matching (normalised cross-correlation) of grayscale thumbnails."
    raw_meaning = "best normalised cross-correlation, -1 to 1; higher is more similar"

    def features(self, picture: Picture) -> np.ndarray:
        gray = picture.gray
        height, width = gray.shape
        scale = min(1.0, THUMB_SIZE / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)

    def compare(self, query: np.ndarray, candidate: np.ndarray) -> Score:
        if query.std() < FLAT_STD or candidate.std() < FLAT_STD:
            return Score(0.0, 0.0)
        whole = cv2.resize(
            candidate, (query.shape[1], query.shape[0]), interpolation=cv2.INTER_AREA
        )
        best = _correlate(query, whole)
        for scale in CROP_SCALES:
            best = max(best, _slide(query, candidate, scale), _slide(candidate, query, scale))
        return Score(best, clamp01(best))


def _slide(image: np.ndarray, template: np.ndarray, scale: float) -> float:
    """Correlation of `template`, shrunk to fit `scale` of `image`, at its best position."""
    fit = scale * min(image.shape[0] / template.shape[0], image.shape[1] / template.shape[1])
    size = (round(template.shape[1] * fit), round(template.shape[0] * fit))
    if min(size) < MIN_TEMPLATE_SIDE:
        return -1.0
    small = cv2.resize(template, size, interpolation=cv2.INTER_AREA)
    if small.std() < FLAT_STD:
        return -1.0
    return _correlate(image, small)


def _correlate(image: np.ndarray, template: np.ndarray) -> float:
    result = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
    # Flat windows of `image` give inf/NaN in OpenCV; they are no match.
    result = np.nan_to_num(result, nan=-1.0, posinf=-1.0, neginf=-1.0)
    return float(np.clip(result.max(), -1.0, 1.0)) if result.size else -1.0
