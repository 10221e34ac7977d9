"""What a side-by-side view draws: verify's matched region and inlier pairs, in image pixels.

Computed after a search with `verify` (`evidence=1`), from the features the search just cached,
so it costs one SIFT pass over the query. Coordinates are in each image's own pixels as shown
(after EXIF rotation): the query's for the first point of a pair, the result's for the second
point and for the quad (the query frame's outline projected into the result).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .comparators import FeatureError, Picture
from .comparators.base import WORKING_SIZE
from .comparators.cache import FeatureCache
from .comparators.verify import VerifyComparator, VerifyFeatures, evidence
from .errors import ImgSearchError
from .images import decode, read_file
from .search import Hit
from .store import ImageRow, Store

log = logging.getLogger(__name__)

# Enough points to show where the match is; a few hundred would only bloat the answer.
MAX_PAIRS = 200


@dataclass(frozen=True)
class EvidenceSource:
    """What evidence needs from a daemon: the verify comparator, its feature cache, the store."""

    verify: VerifyComparator
    features: FeatureCache
    store: Store
    max_file_bytes: int
    max_pixels: int


def attach(source: EvidenceSource, query: bytes | Path, hits: list[Hit]) -> list[dict[str, Any]]:
    """The hits as JSON, each verified one with an `evidence` object."""
    out = [h.as_json() for h in hits]
    if not any("verify" in h.compare for h in hits):
        return out
    data = query if isinstance(query, bytes) else read_file(query, source.max_file_bytes)[0]
    decoded = decode(data, min_side=WORKING_SIZE, max_pixels=source.max_pixels)
    picture = Picture.from_pil(decoded.image)
    query_features = source.verify.features(picture)
    query_scale = decoded.width / picture.width
    rows = source.store.images.image_rows([h.id for h in hits])
    for hit, body in zip(hits, out, strict=True):
        row = rows.get(hit.id)
        if "verify" not in hit.compare or row is None:
            continue
        try:
            [candidate] = source.features.of_file(
                [source.verify],
                hit.id,
                Path(row.path),
                max_file_bytes=source.max_file_bytes,
                max_pixels=source.max_pixels,
            )
        except ImgSearchError as exc:
            log.debug("no evidence for %s: %s", row.path, exc.message)
            continue
        if isinstance(candidate, FeatureError):
            continue
        body["evidence"] = _evidence(
            query_features, candidate, query_scale, (decoded.width, decoded.height), row
        )
    return out


def _evidence(
    query: VerifyFeatures,
    candidate: VerifyFeatures,
    query_scale: float,
    query_size: tuple[int, int],
    row: ImageRow,
) -> dict[str, Any]:
    scale = row.width / candidate.keypoints.width
    found = evidence(query, candidate)
    body: dict[str, Any] = {
        "query_size": list(query_size),
        "image_size": [row.width, row.height],
        "quad": None,
        "matches": [],
        "inliers": 0,
    }
    if found is None:
        return body
    quad, pairs = found
    pairs = pairs * np.array([query_scale, query_scale, scale, scale])
    body["quad"] = _rounded(quad * scale)
    body["inliers"] = len(pairs)
    if len(pairs) > MAX_PAIRS:  # an even sample
        pairs = pairs[np.linspace(0, len(pairs) - 1, MAX_PAIRS).round().astype(int)]
    body["matches"] = _rounded(pairs)
    return body


def _rounded(points: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 1) for v in row] for row in points]
