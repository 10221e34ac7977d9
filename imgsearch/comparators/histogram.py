"""HSV colour histograms compared by correlation: global colour, blind to layout."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import Picture, Score, clamp01

log = logging.getLogger(__name__)

# Hue x saturation x value bins for coloured pixels. Coarse on value so lighting changes
# move little mass.
COLOUR_BINS = (16, 4, 4)
# Hue and saturation are noise on near-grey and near-black pixels: JPEG chroma noise scattered
# them over all bins (a grey photo correlated 0.24 with its own re-encoded copy, the dark
# Hubble field 0.48). Pixels with saturation under GREY_SATURATION or value under DARK_VALUE
# go to value-only bins instead; the worst re-encoded copy then correlates 0.9.
GREY_SATURATION = 32
DARK_VALUE = 48
GREY_BINS = 16
_COLOUR_RANGES = [0, 180, 0, 256, 0, 256]  # OpenCV's 8-bit hue runs 0..179


class HistogramComparator:
    """Correlation of normalised HSV histograms."""

    name = "histogram"
    description = "HSV colour histogram correlation; colour only, ignores where things are."
    raw_meaning = "histogram correlation, -1 to 1; higher is more similar"

    def features(self, picture: Picture) -> np.ndarray:
        hsv = cv2.cvtColor(np.ascontiguousarray(picture.rgb), cv2.COLOR_RGB2HSV)
        grey = ((hsv[:, :, 1] < GREY_SATURATION) | (hsv[:, :, 2] < DARK_VALUE)).astype(np.uint8)
        colour = cv2.calcHist([hsv], [0, 1, 2], 1 - grey, list(COLOUR_BINS), _COLOUR_RANGES)
        value = cv2.calcHist([hsv], [2], grey, [GREY_BINS], [0, 256])
        hist = np.concatenate([colour.ravel(), value.ravel()]).astype(np.float32)
        return hist / max(1.0, float(hist.sum()))

    def compare(self, query: np.ndarray, candidate: np.ndarray) -> Score:
        raw = float(cv2.compareHist(query, candidate, cv2.HISTCMP_CORREL))
        raw = raw if np.isfinite(raw) else 0.0
        return Score(raw, clamp01(raw))
