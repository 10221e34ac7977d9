"""The vector index: a protocol, its segmented implementation, and the size policy.

Modules: `policy` (every size threshold), `base` (the immutable trained segment and its files),
`segments` (base + deletions + recent adds, searched together), `codes` (codes moved between
copies of one trained IVF index), `build` (training and nprobe tuning from the store, and
compaction), `manager` (`LibraryIndex`: background training/compaction and swaps).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .base import IndexFileError
from .build import Source
from .codes import Precoded
from .manager import LibraryIndex
from .policy import Policy, Spec


class VectorIndex(Protocol):
    """What the catalog needs of an index (ids are the store's row ids)."""

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, generation: int, ahead: Precoded | None = None
    ) -> None:
        """Add or replace vectors; `generation` is the database write that made them;
        `ahead`: what encode() made of these vectors beforehand (or None)."""

    def encode(self, vectors: np.ndarray) -> Precoded | None:
        """Codes of vectors about to be added, made ahead off every lock (None: not coded)."""

    def remove(self, ids: np.ndarray, generation: int) -> None:
        """Stop finding these ids."""

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids (best first, -1 padded), among `allowed` ids if given."""

    def describe(self) -> dict[str, Any]:
        """Kind, size, measured recall, nprobe, trained-at: for /stats."""

    def close(self) -> None:
        """Stop background work; nothing needs saving (the store is the truth)."""


__all__ = ["IndexFileError", "LibraryIndex", "Policy", "Precoded", "Source", "Spec", "VectorIndex"]
