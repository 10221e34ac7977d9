"""ORB binary features with cross-checked Hamming matching: a fast, rougher SIFT."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import Picture, Score, saturate
from .keypoints import Keypoints, detect

log = logging.getLogger(__name__)

ORB_FEATURES = 1000
# Bits in an ORB descriptor: the largest possible Hamming distance, reported as the raw
# value when nothing matches.
MAX_DISTANCE = 256.0
# A cross-checked match at or below this distance counts as good. Among the 14 scikit-image
# sample pictures, unrelated pairs have at most 5 matches this close (at 50: up to 55),
# while resized and re-encoded copies keep 50+ and 50% crops mostly 10+.
GOOD_DISTANCE = 35
# As for SIFT: the first few good matches are chance, then the score saturates
# (0.63 at NOISE_MATCHES + MATCH_SCALE).
NOISE_MATCHES = 5
MATCH_SCALE = 30.0


class OrbComparator:
    """Mean Hamming distance of cross-checked ORB matches; scored by the count of close ones."""

    name = "orb"
    description = "ORB binary features, brute-force Hamming matching with cross-check."
    raw_meaning = "mean Hamming distance of matches, 0-256; lower is more similar (256 = none)"

    def features(self, picture: Picture) -> Keypoints:
        detector = cv2.ORB.create(nfeatures=ORB_FEATURES)
        return detect(detector, picture.gray, np.uint8)

    def compare(self, query: Keypoints, candidate: Keypoints) -> Score:
        if len(query) == 0 or len(candidate) == 0:
            return Score(MAX_DISTANCE, 0.0, {"matches": 0, "good_matches": 0})
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        matches = matcher.match(query.descriptors, candidate.descriptors)
        if not matches:
            return Score(MAX_DISTANCE, 0.0, {"matches": 0, "good_matches": 0})
        distances = np.array([m.distance for m in matches], dtype=np.float64)
        good = int(np.count_nonzero(distances <= GOOD_DISTANCE))
        extra = {"matches": len(matches), "good_matches": good}
        return Score(float(distances.mean()), saturate(good - NOISE_MATCHES, MATCH_SCALE), extra)
