"""Sorted id sets without numpy's hashing unique: the same answers as numpy's own functions."""

from __future__ import annotations

import numpy as np
import pytest

from imgsearch.index import idsets


@pytest.mark.parametrize("size", [0, 1, 2, 7, 1000])
def test_unique_union_and_within_agree_with_numpy(size: int) -> None:
    rng = np.random.default_rng(size)
    a = rng.integers(0, max(1, size // 2), size).astype(np.int64)  # with repeats
    b = rng.integers(0, max(1, size), size // 3 + 1).astype(np.int64)
    assert idsets.unique(a).tolist() == np.unique(a).tolist()
    assert idsets.unique(a).dtype == np.int64
    assert idsets.union(a, b).tolist() == np.union1d(a, b).tolist()
    distinct = np.unique(a)
    assert idsets.within(distinct, b).tolist() == np.isin(distinct, b).tolist()


def test_union_of_sorted_disjoint_ids_keeps_every_id_in_order() -> None:
    kept = np.arange(0, 100, 3, dtype=np.int64)
    recent = np.array([1, 50, 200], dtype=np.int64)
    got = idsets.union(kept, recent)
    assert got.tolist() == sorted([*kept.tolist(), *recent.tolist()])
    assert idsets.union(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
