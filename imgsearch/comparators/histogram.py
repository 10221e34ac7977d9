"""HSV colour histograms compared by correlation: global colour, blind to layout."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import Picture, Score, clamp01

log = logging.getLogger(__name__)

# Hue x saturation x value bins. Coarse on value so lighting changes move little mass.
BINS = (16, 8, 4)
_RANGES = [0, 180, 0, 256, 0, 256]  # OpenCV's 8-bit hue runs 0..179


class HistogramComparator:
    """Correlation of normalised HSV histograms."""

    name = "histogram"
    description = "HSV colour histogram correlation; colour only, ignores where things are."
    raw_meaning = "histogram correlation, -1 to 1; higher is more similar"

    def features(self, picture: Picture) -> np.ndarray:
        hsv = cv2.cvtColor(np.ascontiguousarray(picture.rgb), cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(BINS), _RANGES).astype(np.float32)
        total = float(hist.sum())
        return (hist / total if total > 0 else hist).ravel()

    def compare(self, query: np.ndarray, candidate: np.ndarray) -> Score:
        raw = float(cv2.compareHist(query, candidate, cv2.HISTCMP_CORREL))
        raw = raw if np.isfinite(raw) else 0.0
        return Score(raw, clamp01(raw))
