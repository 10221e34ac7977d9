"""Re-ranking comparators: the protocol, the registry, the feature cache and score fusion."""

from __future__ import annotations

from .base import WORKING_SIZE, Comparator, FeatureError, Picture, Score, load_picture
from .cache import FeatureCache
from .fusion import DEFAULT_EVIDENCE, Candidate, Evidence, Ranked, rerank
from .registry import ENTRY_POINT_GROUP, ComparatorRegistry

__all__ = [
    "DEFAULT_EVIDENCE",
    "ENTRY_POINT_GROUP",
    "WORKING_SIZE",
    "Candidate",
    "Comparator",
    "ComparatorRegistry",
    "Evidence",
    "FeatureError",
    "FeatureCache",
    "Picture",
    "Ranked",
    "Score",
    "load_picture",
    "rerank",
]
