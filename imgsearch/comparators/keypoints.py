"""Keypoints as plain numpy arrays (cv2.KeyPoint cannot be pickled) and descriptor matching."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .distances import ranking_distances

log = logging.getLogger(__name__)

# Below this shorter side the detectors find nothing useful (and SIFT's pyramid can fail on
# 1-pixel images), so detection is skipped.
MIN_DETECT_SIDE = 16
# BLAS threads per matching call. The compare pool already runs one candidate per core; an
# OpenBLAS that also splits each 1000 x 1000 product over every core oversubscribes them,
# and its spinning threads made one match cost 13 CPU ms instead of 3.4 (2 cores, loaded).
MATCH_BLAS_THREADS = 1


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


def limit_blas_threads(threads: int = MATCH_BLAS_THREADS) -> None:
    """Cap the BLAS that numpy (and scipy) call to `threads` per call, process-wide; FAISS's
    own BLAS keeps its threads (its searches and training are one call over many rows)."""
    from threadpoolctl import ThreadpoolController

    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and "faiss" not in lib.filepath and lib.num_threads > threads:
            log.debug("BLAS %s: %d -> %d threads", lib.filepath, lib.num_threads, threads)
            lib.set_num_threads(threads)


def ratio_matches(
    query: Keypoints, candidate: Keypoints, ratio: float, *, int8: bool | None = None
) -> np.ndarray:
    """SIFT matches that pass Lowe's ratio test, one per candidate keypoint.

    Returns an int array (n x 2) of (query index, candidate index). When several query points
    pick the same candidate point only the closest is kept, so a repeated texture cannot count
    many times. Brute force like OpenCV's BFMatcher (same matches), but as one exact matrix
    product (`distances.py`: int8 where the CPU has it, else fp32 BLAS; `int8` forces a path)
    and two argmin passes: about 1.5x faster than `knnMatch` plus a Python loop with BLAS.
    """
    if len(query) == 0 or len(candidate) < 2:
        return np.zeros((0, 2), np.int64)
    # Squared L2 distances less each query row's offset, which cannot change its ranking.
    dist, offsets = ranking_distances(query.descriptors, candidate.descriptors, int8=int8)
    rows = np.arange(len(dist))
    best = dist.argmin(axis=1)
    first = dist[rows, best].copy()
    dist[rows, best] = np.inf if dist.dtype.kind == "f" else np.iinfo(dist.dtype).max
    second = dist.min(axis=1)
    # Exact integers below 2^24 on both paths, so float32 holds them exactly: the test below
    # is then computed identically whichever product made them.
    first = np.maximum(first + offsets, 0).astype(np.float32)
    second = np.maximum(second + offsets, 0).astype(np.float32)
    good = first < (ratio * ratio) * second  # d1 < ratio * d2, squared
    query_idx, train_idx, d1 = rows[good], best[good], first[good]
    order = np.lexsort((d1, train_idx))  # by candidate point, closest first
    query_idx, train_idx = query_idx[order], train_idx[order]
    keep = np.ones(len(train_idx), dtype=bool)
    keep[1:] = train_idx[1:] != train_idx[:-1]
    return np.stack([query_idx[keep], train_idx[keep]], axis=1).astype(np.int64)
