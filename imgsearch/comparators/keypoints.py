"""Keypoints as plain numpy arrays (cv2.KeyPoint cannot be pickled) and descriptor matching."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Below this shorter side the detectors find nothing useful (and SIFT's pyramid can fail on
# 1-pixel images), so detection is skipped.
MIN_DETECT_SIDE = 16


@dataclass(frozen=True, eq=False)
class Keypoints:
    """Keypoint positions (float32 n x 2, x/y in working pixels) and their descriptors."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.points.shape[0])


def detect(detector: cv2.Feature2D, gray: np.ndarray, descriptor_dtype: type) -> Keypoints:
    """Detect and describe; an image too small or too flat gives an empty set, never an error."""
    height, width = gray.shape[:2]
    empty = Keypoints(
        np.zeros((0, 2), np.float32), np.zeros((0, 0), descriptor_dtype), width, height
    )
    if min(height, width) < MIN_DETECT_SIDE:
        return empty
    try:
        keypoints, descriptors = detector.detectAndCompute(gray, None)
    except cv2.error as exc:
        log.debug("keypoint detection failed on a %dx%d image: %s", width, height, exc)
        return empty
    if descriptors is None or not keypoints:
        return empty
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    return Keypoints(points, descriptors.astype(descriptor_dtype), width, height)


def ratio_matches(query: Keypoints, candidate: Keypoints, ratio: float) -> np.ndarray:
    """SIFT matches that pass Lowe's ratio test, one per candidate keypoint.

    Returns an int array (n x 2) of (query index, candidate index). When several query points
    pick the same candidate point only the closest is kept, so a repeated texture cannot count
    many times.
    """
    if len(query) == 0 or len(candidate) < 2:
        return np.zeros((0, 2), np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = matcher.knnMatch(
        query.descriptors.astype(np.float32), candidate.descriptors.astype(np.float32), k=2
    )
    best: dict[int, tuple[float, int]] = {}
    for pair in pairs:
        if len(pair) < 2:
            continue
        first, second = pair
        if first.distance < ratio * second.distance:
            seen = best.get(first.trainIdx)
            if seen is None or first.distance < seen[0]:
                best[first.trainIdx] = (first.distance, first.queryIdx)
    rows = [(q, t) for t, (_, q) in sorted(best.items())]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)
