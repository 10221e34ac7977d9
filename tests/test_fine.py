"""Fine codes (imgsearch/index/fine.py): the file of codes, the ranking, and their life beside
the index (saved with a base, written again by a start-up's replay, made anew for a base of an
earlier version, pruned after a new training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from imgsearch.catalog import INDEX_DIR, Catalog
from imgsearch.index import Policy
from imgsearch.index import base as B
from imgsearch.index import fine as F
from imgsearch.index import policy as P
from imgsearch.index.build import choose
from imgsearch.store import FileFacts, NewImage

from .helpers import CONE_DIM, cone

N = 1500
POLICY = Policy(exact_max=100, delta_max=1 << 40)  # ivf-pqfs from a few hundred vectors


def fill(catalog: Catalog, vectors: np.ndarray, start: int = 0) -> np.ndarray:
    items = [
        NewImage(FileFacts(f"/f/{start + i}.jpg", 1, 1, f"h{start + i}", 1, 1), v)
        for i, v in enumerate(vectors)
    ]
    return np.asarray(catalog.put(items).ids, np.int64)


def built(folder: Path, vectors: np.ndarray) -> tuple[Catalog, np.ndarray]:
    """A catalog whose base holds `vectors` (trained, saved)."""
    catalog = Catalog(folder, "m", CONE_DIM, POLICY)
    ids = fill(catalog, vectors)
    catalog.index.maintain()
    catalog.index.rebase()
    return catalog, ids


def meta_of(folder: Path) -> dict:
    return json.loads((B.saved(folder / INDEX_DIR)[0] / B.META).read_text())


def test_the_file_grows_and_another_mapping_of_it_follows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "fine-x.u8"
    one = F.FineTable(path, 8)
    ids = np.array([3, F.MIN_ROWS + 5, 3 * F.MIN_ROWS], np.int64)  # past the first size
    codes = rng.integers(1, 256, (3, 8), dtype=np.uint8)
    one.put(ids, codes)
    assert one.covers(3 * F.MIN_ROWS) and not one.covers(10 * F.MIN_ROWS)
    two = F.FineTable(path, 8)  # e.g. a base reopened from its files
    later = np.array([8 * F.MIN_ROWS], np.int64)
    one.put(later, codes[:1])  # grown again after `two` mapped it
    assert (two.get(np.concatenate([ids, later])) == np.vstack([codes, codes[:1]])).all()
    assert not two.get(np.array([4], np.int64)).any()  # never written: zeros
    one.flush()
    assert path.stat().st_size >= (8 * F.MIN_ROWS + 1) * 8


def test_ranking_by_fine_codes_keeps_the_true_best(tmp_path: Path) -> None:
    """Of 300 candidates (the exact top 300, shuffled), the 40 kept by their fine codes hold
    the exact top 10 (a random 40 would hold ~1.3 of them); fewer candidates than kept, and
    -1 padding, come back as they were."""
    x = cone(4000, 40)
    ids = np.arange(len(x), dtype=np.int64)
    fine = F.Fine.train(x[:2000], tmp_path)
    fine.put(ids, x)
    rng = np.random.default_rng(1)
    queries = x[:30] + 0.05 * rng.standard_normal((30, CONE_DIM)).astype(np.float32)
    order = np.argsort(-(queries @ x.T), axis=1)
    candidates = rng.permuted(order[:, :300], axis=1)
    kept = fine.rank(queries, candidates, 40)
    found = np.mean([len(set(k) & set(o[:10])) / 10 for k, o in zip(kept, order, strict=True)])
    assert kept.shape == (30, 40) and found >= 0.97, found
    short = np.full((1, 60), -1, np.int64)
    short[0, :25] = candidates[0, :25]
    assert (fine.rank(queries[:1], short, 40) == short[:, :40]).all()


def test_a_base_saves_its_fine_codes_and_a_restart_writes_the_replayed_ones_again(
    tmp_path: Path,
) -> None:
    """The base names its fine-code file; rows added after it (a kill -9 before the next
    base: their codes may not have reached the file) get their codes written again by the
    replay, and searches rank by them: each new vector finds itself first."""
    x = cone(N + 60, 30)
    catalog, _ = built(tmp_path, x[:N])
    about = catalog.index.describe()
    assert about["fine_codes"] == F.FACTORY and about["kind"] == "ivf-pqfs"
    name = meta_of(tmp_path)["fine"]
    assert [p.name for p in F.tables(tmp_path / INDEX_DIR)] == [name]
    late = fill(catalog, x[N:], start=N)
    catalog.index.close()  # nothing more is saved (as after kill -9)
    catalog.store.close()
    table = F.FineTable(tmp_path / INDEX_DIR / name, CONE_DIM // 2)
    table.put(late, np.zeros((len(late), CONE_DIM // 2), np.uint8))  # their codes lost
    table.flush()
    again = Catalog(tmp_path, "m", CONE_DIM, POLICY)
    try:
        fine = again.index._segments.base.fine
        assert fine is not None and fine.name == name
        assert (fine.table.get(late) == fine.encode(x[N:])).all()
        hits = again.nearest(x[N:], 5)
        assert [row[0].id for row in hits] == late.tolist()
    finally:
        again.close()


def test_a_base_without_fine_codes_gets_them_and_a_new_training_drops_the_old_file(
    tmp_path: Path,
) -> None:
    """A base whose file is gone (or saved by an earlier version) is searched by re-scoring
    every candidate from the store until the worker writes new codes; a training for a much
    bigger library writes its own file and the old one is deleted."""
    x = cone(4 * N, 30)
    catalog, ids = built(tmp_path, x[:N])
    name = meta_of(tmp_path)["fine"]
    catalog.close()
    (tmp_path / INDEX_DIR / name).unlink()
    again = Catalog(tmp_path, "m", CONE_DIM, POLICY)
    try:
        assert again.index.describe()["fine_codes"] is None
        assert [row[0].id for row in again.nearest(x[:20], 3)] == ids[:20].tolist()
        assert again.index.maintain() == "fine"
        assert again.index.describe()["fine_codes"] == F.FACTORY
        made = meta_of(tmp_path)["fine"]
        assert made != name and [p.name for p in F.tables(tmp_path / INDEX_DIR)] == [made]
        assert [row[0].id for row in again.nearest(x[:20], 3)] == ids[:20].tolist()
        fill(again, x[N:], start=N)  # 4x the trained size: retrained
        assert again.index.maintain() == "train"
        newest = meta_of(tmp_path)["fine"]
        assert newest != made and [p.name for p in F.tables(tmp_path / INDEX_DIR)] == [newest]
    finally:
        again.close()


@pytest.mark.parametrize("fine", [False, True])
def test_the_tuning_tries_deep_re_scoring_first_with_fine_codes(fine: bool) -> None:
    """With fine codes a candidate costs fine.COST codes, not RESCORE_COST: the deepest depth
    is searched first and kept (its nprobe is the smallest); without them, 25x is searched
    first and a shallower depth wins on the same recall surface (fewer rows read from the
    store), 100x never searched (25x meets the goal)."""
    lists, per_list = 4096, 40.0
    spec = P.Spec("ivf-pqfs", "IVF4096,PQ32x4fs", lists)
    scale = {4: 400, 10: 300, 25: 200, 100: 100}
    calls: list[tuple[int, int]] = []

    def recall(rescore: int, nprobe: int) -> float:
        calls.append((rescore, nprobe))
        return 0.999 * (1 - math.exp(-nprobe / scale[rescore]))

    _, got, rescore = choose(recall, spec, per_list, P.TARGET_RECALL, fine)
    assert got >= P.TARGET_RECALL + P.TUNE_MARGIN
    assert calls[0][0] == (P.DEEP_RESCORE if fine else max(P.RESCORE_FACTORS))
    assert (rescore == P.DEEP_RESCORE) == fine, calls
    assert fine or all(depth != P.DEEP_RESCORE for depth, _ in calls)
