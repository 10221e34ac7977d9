"""The tuning's re-scoring reads (imgsearch.index.tuning.Fetched): each row read from the store
once however many of the tuning's searches re-score it, the answers those of the store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgsearch.index.tuning import Fetched

DIM = 4


class Store:
    """Vectors of the even ids up to 100 (odd ids are not stored); every id asked is logged."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        self.asked += list(ids)
        found = np.array([i for i in ids if i % 2 == 0 and i <= 100], np.int64)
        return found, vectors_of(found)


def vectors_of(ids: np.ndarray) -> np.ndarray:
    return (
        np.stack([ids * 1.0, ids + 0.5, -ids * 1.0, np.ones(len(ids))], axis=1)
        .astype(np.float32)
        .reshape(len(ids), DIM)
    )


def test_rows_are_read_once_and_answered_as_the_store_answers() -> None:
    store = Store()
    fetch = Fetched(store, rows=1000)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = np.unique(rng.integers(0, 120, 30))
        got_ids, got = fetch(ids.tolist())
        want = ids[(ids % 2 == 0) & (ids <= 100)]
        np.testing.assert_array_equal(got_ids, want)
        np.testing.assert_array_equal(got, vectors_of(want))
    stored = [i for i in store.asked if i % 2 == 0 and i <= 100]
    assert len(stored) == len(set(stored))  # no stored row read twice
    assert len(fetch.ids) == len(set(stored))


def test_past_its_rows_reads_pass_through() -> None:
    store = Store()
    fetch = Fetched(store, rows=3)
    first_ids, _ = fetch([0, 2, 4, 6, 8])
    assert first_ids.tolist() == [0, 2, 4, 6, 8] and len(fetch.ids) == 3
    store.asked.clear()
    ids, got = fetch([0, 2, 4, 6, 8, 10])
    assert store.asked == [6, 8, 10]  # 0, 2, 4 kept; the rest read again
    np.testing.assert_array_equal(ids, [0, 2, 4, 6, 8, 10])
    np.testing.assert_array_equal(got, vectors_of(ids))
    assert fetch([])[0].tolist() == [] and fetch([1, 3])[0].tolist() == []
