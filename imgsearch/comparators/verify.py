"""Geometric verification: SIFT matches + a RANSAC homography, and a verdict on what it means."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .base import Picture, Score, saturate
from .keypoints import Keypoints, ratio_matches
from .sift import LOWE_RATIO, sift_keypoints

log = logging.getLogger(__name__)

# RANSAC reprojection error in working pixels (640 px long side): re-encoding and resizing
# move keypoints by 1-2 px; 5 px leaves room for rotations without admitting random matches.
RANSAC_THRESHOLD = 5.0
# Verified at all: among the 182 pairs of 14 scikit-image sample pictures, unrelated pairs
# reach at most 6 inliers (of 0-15 chance matches). Their generated copies keep 17+ at 1/4
# size, 25+ cropped to 50%, 37+ as an inset half a page wide, 80+ rotated (most far more).
# 15 inliers making up a quarter of the matches sits between the two.
MIN_INLIERS = 15
MIN_INLIER_RATIO = 0.25
# Fewer ratio-test matches than MIN_INLIERS can never verify, so RANSAC is not run on them
# (their inliers count as 0): on unrelated candidates, which reach 8-15 chance matches,
# findHomography runs its full 2000 iterations, ~3 CPU ms, as much as the matching itself.
MIN_MATCHES = MIN_INLIERS
# RANSAC stops early once it is this sure it has seen the best model (OpenCV's default)...
RANSAC_CONFIDENCE = 0.995
# ...and runs at most as many iterations as finding, with this confidence, a model whose
# inlier share is the least that could still verify (MIN_INLIERS of the matches, at least
# MIN_INLIER_RATIO) needs: 143 for 30 matches instead of OpenCV's 2000, which unrelated
# candidates (no good model to stop early on) always ran to the end.
RANSAC_CAP_CONFIDENCE = 0.9999
RANSAC_MAX_ITERS = 2000
# The projected frame may shrink or grow at most this much (an inset an eighth of the
# canvas); beyond that, or with a fold (non-convex quad), the homography is degenerate.
MAX_SCALE = 8.0
# Duplicate: the same framing. Copies resized (down to 1/4) and re-encoded (JPEG quality 10)
# map frame onto frame with coverage >= 0.99, rotation < 0.3 degree and axis scales within
# 1.5% of each other; a 90% centre crop already drops coverage to 0.81, and a 10% squash
# gives 1.11.
DUPLICATE_COVERAGE = 0.95
DUPLICATE_MAX_ROTATION = 1.0  # degrees
DUPLICATE_MAX_ANISOTROPY = 1.05  # ratio of the two axis scales
# ... and the same pixels: after alignment at THUMB_SIZE (both blurred), a pixel differs when
# its grey level moves by more than CHANGE_LEVEL. Resampling noise reaches 0.6% of pixels (a
# 1/4 downscale upsampled back); a caption across the picture changes 1.5-4%. A small corner
# watermark (0.3-0.5%) cannot be told from resampling noise, so it stays a duplicate.
THUMB_SIZE = 320
CHANGE_LEVEL = 40
DUPLICATE_MAX_CHANGED = 0.01
# Score ranges by verdict: similar 0, edited 0.5..0.9, duplicate 0.9..1, rising with inliers.
INLIER_SCALE = 60.0
# One photo, for /duplicates (stricter than `edited`, looser than `duplicate`): one frame lies
# inside the other (a crop keeping at least half of it, a border, a resize) and, aligned, with
# grey levels matched (brightness, contrast, gamma), at most 1% of the overlap differs. Edited
# copies of scikit-image photos (re-encoded, resized, cropped, brightness -25..+20%) differ by
# at most 0.9% once matched; burst shots fail (bench/duplicates.py --distances): a camera moved
# by 5-15% leaves both frames 0.80-0.91 inside each other, a subject a fifth of the width wide
# moved changes 5-8% of the pixels (one a tenth wide, 1.2-1.9%).
CONTAINED_COVERAGE = 0.95
MIN_KEPT = 0.5
SAME_PHOTO_MAX_CHANGED = 0.01


@dataclass(frozen=True, eq=False)
class VerifyFeatures:
    """SIFT keypoints plus a grayscale thumbnail for the pixel-level duplicate check."""

    keypoints: Keypoints
    thumb: np.ndarray


@dataclass(frozen=True)
class Geometry:
    """What a homography does to the query frame."""

    rotation: float  # degrees
    anisotropy: float
    flipped: bool
    query_coverage: float  # share of the query frame that lands inside the candidate
    candidate_coverage: float  # share of the candidate frame the query covers

    def same_framing(self) -> bool:
        return (
            not self.flipped
            and abs(self.rotation) <= DUPLICATE_MAX_ROTATION
            and self.anisotropy <= DUPLICATE_MAX_ANISOTROPY
            and min(self.query_coverage, self.candidate_coverage) >= DUPLICATE_COVERAGE
        )


class VerifyComparator:
    """RANSAC-verified SIFT matches; says duplicate, edited (crop, overlay, inset) or similar."""

    name = "verify"
    description = "SIFT + RANSAC homography: is this the same picture, an edit of it, or not?"
    raw_meaning = "RANSAC inlier count, 0 and up; extra: inliers, inlier_ratio, verdict"
    # It can confirm that the query is (or contains) a part of a candidate, so searches widen
    # their candidates with regions of the query when it is asked for.
    locates_parts = True

    def features(self, picture: Picture) -> VerifyFeatures:
        gray = picture.gray
        scale = min(1.0, THUMB_SIZE / max(gray.shape))
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        thumb = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return VerifyFeatures(sift_keypoints(picture), thumb)

    def compare(self, query: VerifyFeatures, candidate: VerifyFeatures) -> Score:
        return _verdict(query, candidate, _fit(query, candidate))

    def same_photo(self, a: VerifyFeatures, b: VerifyFeatures) -> tuple[Score, bool]:
        """`compare(a, b)`, and whether b is a copy of a at most resized, re-encoded, cropped
        (keeping half) or re-lit: the test /duplicates confirms near pairs with."""
        fit = _fit(a, b)
        score = _verdict(a, b, fit)
        if score.extra["verdict"] != "edited" or fit.homography is None or fit.geometry is None:
            return score, score.extra["verdict"] == "duplicate"
        coverages = (fit.geometry.query_coverage, fit.geometry.candidate_coverage)
        if max(coverages) < CONTAINED_COVERAGE or min(coverages) < MIN_KEPT:
            return score, False
        changed = _changed(fit.homography, a, b, match_levels=True)
        return score, changed <= SAME_PHOTO_MAX_CHANGED


@dataclass(frozen=True)
class _Fit:
    """RANSAC's answer: the homography and its geometry when the match is verified at all."""

    matches: int
    inliers: int
    homography: np.ndarray | None = None
    geometry: Geometry | None = None
    pairs: np.ndarray | None = None  # inlier pairs (n x 4: query x, y, candidate x, y)


def _fit(query: VerifyFeatures, candidate: VerifyFeatures) -> _Fit:
    matches = ratio_matches(query.keypoints, candidate.keypoints, LOWE_RATIO)
    if len(matches) < MIN_MATCHES:
        return _Fit(len(matches), 0)
    src = query.keypoints.points[matches[:, 0]].reshape(-1, 1, 2)
    dst = candidate.keypoints.points[matches[:, 1]].reshape(-1, 1, 2)
    try:
        homography, mask = cv2.findHomography(
            src,
            dst,
            cv2.RANSAC,
            RANSAC_THRESHOLD,
            maxIters=ransac_iterations(len(matches)),
            confidence=RANSAC_CONFIDENCE,
        )
    except cv2.error as exc:
        log.debug("findHomography failed: %s", exc)
        return _Fit(len(matches), 0)
    if homography is None or mask is None:
        return _Fit(len(matches), 0)
    inliers = int(np.count_nonzero(mask))
    geometry = _geometry(homography, query.keypoints, candidate.keypoints)
    if geometry is None or inliers < MIN_INLIERS or inliers < MIN_INLIER_RATIO * len(matches):
        return _Fit(len(matches), inliers)
    pairs = np.hstack([src, dst]).reshape(-1, 4)[mask.ravel() != 0]
    return _Fit(len(matches), inliers, homography, geometry, pairs)


def ransac_iterations(matches: int) -> int:
    """Iterations after which RANSAC has, with RANSAC_CAP_CONFIDENCE, drawn one all-inlier
    sample of 4 if the inliers are as many as a verified match needs (fewer cannot verify)."""
    share = max(MIN_INLIER_RATIO, MIN_INLIERS / max(matches, 1))
    if share >= 1.0:
        return 1
    needed = math.log(1.0 - RANSAC_CAP_CONFIDENCE) / math.log(1.0 - share**4)
    return max(1, min(RANSAC_MAX_ITERS, math.ceil(needed)))


def evidence(
    query: VerifyFeatures, candidate: VerifyFeatures
) -> tuple[np.ndarray, np.ndarray] | None:
    """Where a verified match lies, in working pixels: the query frame's outline projected into
    the candidate (4 x 2) and the inlier pairs (n x 4); None when the match is not verified."""
    fit = _fit(query, candidate)
    if fit.homography is None or fit.pairs is None:
        return None
    w, h = float(query.keypoints.width), float(query.keypoints.height)
    corners = np.array([[[0, 0], [w, 0], [w, h], [0, h]]], dtype=np.float64)
    quad = cv2.perspectiveTransform(corners, fit.homography)[0]
    return quad, fit.pairs


def _verdict(query: VerifyFeatures, candidate: VerifyFeatures, fit: _Fit) -> Score:
    if fit.homography is None or fit.geometry is None:
        return _score(fit.inliers, fit.matches, "similar")
    duplicate = (
        fit.geometry.same_framing()
        and _changed(fit.homography, query, candidate) <= DUPLICATE_MAX_CHANGED
    )
    return _score(fit.inliers, fit.matches, "duplicate" if duplicate else "edited")


def _score(inliers: int, matches: int, verdict: str) -> Score:
    ratio = inliers / matches if matches else 0.0
    extra = {"inliers": inliers, "inlier_ratio": round(ratio, 4), "verdict": verdict}
    strength = saturate(inliers - MIN_INLIERS, INLIER_SCALE)
    score = {"similar": 0.0, "edited": 0.5 + 0.4 * strength, "duplicate": 0.9 + 0.1 * strength}
    return Score(float(inliers), score[verdict], extra)


def _geometry(homography: np.ndarray, query: Keypoints, candidate: Keypoints) -> Geometry | None:
    """Describe the homography, or None when it is degenerate (folds, flips to infinity)."""
    if not np.all(np.isfinite(homography)) or abs(homography[2, 2]) < 1e-12:
        return None
    h = homography / homography[2, 2]
    w, hq = float(query.width), float(query.height)
    corners = np.array([[0, 0], [w, 0], [w, hq], [0, hq]], dtype=np.float64)
    projective = np.hstack([corners, np.ones((4, 1))]) @ h.T
    if np.any(projective[:, 2] <= 1e-6):
        return None
    quad = (projective[:, :2] / projective[:, 2:]).astype(np.float32)
    area = abs(float(cv2.contourArea(quad)))
    if not cv2.isContourConvex(quad) or not (1 / MAX_SCALE**2 <= area / (w * hq) <= MAX_SCALE**2):
        return None
    overlap = _area(_clip(quad.astype(np.float64), float(candidate.width), float(candidate.height)))
    singular = np.linalg.svd(h[:2, :2], compute_uv=False)
    return Geometry(
        rotation=math.degrees(math.atan2(h[1, 0] - h[0, 1], h[0, 0] + h[1, 1])),
        anisotropy=float(singular[0] / max(singular[1], 1e-12)),
        flipped=bool(np.linalg.det(h[:2, :2]) < 0),
        query_coverage=overlap / area,
        candidate_coverage=overlap / (candidate.width * candidate.height),
    )


def _clip(polygon: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of a convex polygon inside the frame [0, width] x [0, height].

    (cv2.intersectConvexConvex misreports polygons that share edges with the frame, which is
    exactly the duplicate case.)
    """
    points = polygon
    for axis, limit, keep_below in (
        (0, 0.0, False),
        (0, width, True),
        (1, 0.0, False),
        (1, height, True),
    ):
        if len(points) == 0:
            break
        inside = points[:, axis] <= limit if keep_below else points[:, axis] >= limit
        kept: list[np.ndarray] = []
        for i in range(len(points)):
            current, following = points[i], points[(i + 1) % len(points)]
            if inside[i]:
                kept.append(current)
            if inside[i] != inside[(i + 1) % len(points)]:
                t = (limit - current[axis]) / (following[axis] - current[axis])
                kept.append(current + t * (following - current))
        points = np.array(kept, dtype=np.float64).reshape(-1, 2)
    return points


def _area(polygon: np.ndarray) -> float:
    """Shoelace area of a simple polygon."""
    if len(polygon) < 3:
        return 0.0
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _changed(
    homography: np.ndarray,
    query: VerifyFeatures,
    candidate: VerifyFeatures,
    *,
    match_levels: bool = False,
) -> float:
    """Share of the query's pixels that differ from the aligned candidate (thumbnail scale);
    with `match_levels`, after mapping the candidate's grey levels onto the query's."""
    qh, qw = query.thumb.shape
    ch, cw = candidate.thumb.shape
    to_query = np.diag([qw / query.keypoints.width, qh / query.keypoints.height, 1.0])
    to_candidate = np.diag([cw / candidate.keypoints.width, ch / candidate.keypoints.height, 1.0])
    h = to_candidate @ homography @ np.linalg.inv(to_query)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    aligned = cv2.warpPerspective(candidate.thumb, h, (qw, qh), flags=flags)
    inside = cv2.warpPerspective(np.full_like(candidate.thumb, 255), h, (qw, qh), flags=flags)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) == 255
    if not inside.any():
        return 1.0
    if match_levels:
        aligned = _match_levels(aligned, query.thumb, inside)
    a = cv2.GaussianBlur(query.thumb, (5, 5), 0).astype(np.int16)
    b = cv2.GaussianBlur(aligned, (5, 5), 0).astype(np.int16)
    differs = np.abs(a - b) > CHANGE_LEVEL
    return float(np.count_nonzero(differs & inside)) / float(np.count_nonzero(inside))


def _match_levels(source: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`source` with its grey levels remapped so that, inside `mask`, their histogram is the
    reference's (undoes brightness, contrast and gamma changes, clipping included)."""
    count = int(np.count_nonzero(mask))
    src_cdf = np.cumsum(np.bincount(source[mask], minlength=256)) / count
    ref_cdf = np.cumsum(np.bincount(reference[mask], minlength=256)) / count
    lut = np.interp(src_cdf, ref_cdf, np.arange(256, dtype=np.float64))
    matched: np.ndarray = np.clip(np.rint(lut), 0, 255).astype(np.uint8)[source]
    return matched
