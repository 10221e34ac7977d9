"""SIFT keypoint matching: how many local features of the query reappear in the candidate."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import Picture, Score, saturate
from .keypoints import Keypoints, detect, ratio_matches

log = logging.getLogger(__name__)

# Keypoints kept per image (strongest first). 1000 finds crops down to about a quarter of the
# picture while keeping one brute-force match under ~15 ms on a laptop core.
SIFT_FEATURES = 1000
# Lowe's ratio test, as in the SIFT paper.
LOWE_RATIO = 0.75
# Unrelated photos still pass the ratio test by chance: 0-15 matches among the skimage photos
# at 1000 keypoints (tests/test_comparators.py). The first NOISE_MATCHES count for nothing,
# and the score reaches 0.63 at NOISE_MATCHES + MATCH_SCALE (a typical heavy crop) and
# 0.95 at about 90 matches, where resized or re-encoded copies sit (hundreds).
NOISE_MATCHES = 10
MATCH_SCALE = 30.0


def sift_keypoints(picture: Picture) -> Keypoints:
    """SIFT keypoints of a picture; descriptors stored as uint8 (OpenCV rounds them anyway)."""
    detector = cv2.SIFT_create(nfeatures=SIFT_FEATURES)  # per call: cv2 objects are not shared
    return detect(detector, picture.gray, np.uint8)


class SiftComparator:
    """Counts SIFT matches that pass Lowe's ratio test."""

    name = "sift"
    description = "SIFT keypoints matched with Lowe's ratio test; robust to crop, scale, rotation."
    raw_meaning = "number of good matches (ratio test 0.75), 0 and up; higher is more similar"

    def features(self, picture: Picture) -> Keypoints:
        return sift_keypoints(picture)

    def compare(self, query: Keypoints, candidate: Keypoints) -> Score:
        matches = len(ratio_matches(query, candidate, LOWE_RATIO))
        return Score(float(matches), saturate(matches - NOISE_MATCHES, MATCH_SCALE))
