"""Sets of image ids as sorted numpy arrays, made without `np.unique`'s hashing.

numpy 2.4's `np.unique` (and `np.union1d`, built on it) hashes when asked for the values
alone, and holds the GIL while it does: at 10M ids, 12 s with pauses of 1-1.8 s in which no
other thread runs, so every search waited that long while a compaction computed its ids
(docs/BENCHMARKS.md, `bench/gil_holds.py`). Sorting lets go of the GIL and takes 0.6 s.
"""

from __future__ import annotations

import numpy as np


def unique(ids: np.ndarray) -> np.ndarray:
    """The distinct values of `ids`, sorted."""
    ordered = np.sort(np.asarray(ids).reshape(-1))
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted distinct values of both arrays (what `np.union1d` returns)."""
    return unique(np.concatenate((np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))))


def within(ids: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Which of the distinct `ids` are in `among` (a boolean mask; `np.isin` would hash)."""
    return np.isin(ids, unique(among), assume_unique=True)
