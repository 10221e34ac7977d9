"""SIFT keypoint matching: how many local features of the query reappear in the candidate."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import Picture, Score, saturate
from .keypoints import Keypoints, detect, ratio_matches

log = logging.getLogger(__name__)

# Keypoints kept per image (strongest first). 1000 still finds 9 in 10 crops to 35% of the
# width, while one brute-force match stays about 25 ms (features about 175 ms at 640 px).
SIFT_FEATURES = 1000
# Lowe's ratio test, as in the SIFT paper.
LOWE_RATIO = 0.75
# Unrelated pictures still pass the ratio test by chance: 0-15 matches among the 182 pairs
# of scikit-image sample pictures. Generated copies of them keep: 45+ resized to 1/2 and
# JPEG'd, 18+ at 1/4 size, 25+ for a 50% crop, 84+ rotated 20 degrees. So the first
# NOISE_MATCHES count for nothing, and the score is 0.5 at ~31 matches, 0.95 at ~100.
NOISE_MATCHES = 10
MATCH_SCALE = 30.0


def sift_keypoints(picture: Picture) -> Keypoints:
    """SIFT keypoints of a picture, extracted once per Picture (`sift` and `verify` share
    them); descriptors stored as uint8 (OpenCV rounds them anyway)."""
    return picture.shared("sift", _extract)


def _extract(picture: Picture) -> Keypoints:
    detector = cv2.SIFT.create(nfeatures=SIFT_FEATURES)  # per call: cv2 objects are not shared
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
