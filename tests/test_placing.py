"""Adds to a fast-scan IVF with the lists chosen in bfloat16 and the codes packed here
(imgsearch.index.placing) against FAISS's own add_with_ids."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from imgsearch.index.codes import Encoded, encoded, merge_into, nonempty
from imgsearch.index.placing import Placer

from .helpers import CONE_DIM, cone, contents, faiss_threads_after, trained


@pytest.mark.parametrize(
    "factory", ["IVF40,PQ32x4fs", "IVF7,PQ16x4fs", "IVF40,PQ8x4fs", "RPCA,IVF40,PQ16x4fs"]
)
def test_placed_codes_are_the_codes_faiss_adds(factory: str) -> None:
    """Every id in the list FAISS's float32 scan puts it in (bar exact-score ties), with the
    very code FAISS writes, in blocks a search reads: the same hits, the same scores."""
    import faiss

    x = cone(6_000, 50)
    template = trained(factory, x[:3_000])
    placer = Placer.of(template)
    assert placer is not None
    ids = np.arange(10_000, 10_000 + 3_000, dtype=np.int64)[::-1].copy()  # not in list order
    ours = encoded(template, ids, x[3_000:], placer).index
    theirs = encoded(template, ids, x[3_000:]).index
    assert ours.ntotal == theirs.ntotal == 3_000
    mine, faiss_ = contents(ours), contents(theirs)
    assert mine.keys() == faiss_.keys() == set(ids.tolist())
    same = [i for i in mine if mine[i][0] == faiss_[i][0]]
    assert len(same) >= 0.995 * len(mine)
    assert all(mine[i][1] == faiss_[i][1] for i in same)
    for index in (ours, theirs):
        faiss.extract_index_ivf(index).nprobe = 7
    q = cone(50, 50, seed=9)
    d1, i1 = ours.search(q, 10)
    d2, i2 = theirs.search(q, 10)
    assert (i1 == i2).mean() >= 0.98
    np.testing.assert_allclose(d1[i1 == i2], d2[i1 == i2], atol=1e-5)


def test_placed_batches_merge_into_segments_and_bases() -> None:
    """Batches of a few codes a list (an import's) and of whole blocks merge into an index
    that FAISS filled, and read back what was placed."""
    x = cone(9_000, 40, seed=2)
    template = trained("IVF8,PQ32x4fs", x[:2_000])
    placer = Placer.of(template)
    assert placer is not None
    target = encoded(template, np.arange(2_000, dtype=np.int64), x[:2_000]).index
    expected = contents(target)
    first = 2_000
    for size in (1, 5, 32, 64, 700, 3_000):
        ids = np.arange(first, first + size, dtype=np.int64)
        batch = encoded(template, ids, x[first : first + size], placer)
        expected.update(contents(batch.index))
        merge_into(target, Encoded(batch.index, nonempty(batch.index)))
        first += size
    assert target.ntotal == first
    assert contents(target) == expected


def test_only_fast_scan_over_a_flat_quantizer_is_placed() -> None:
    x = cone(3_000, 20)
    assert Placer.of(None) is None
    assert Placer.of(trained("IVF16,Flat", x)) is None
    assert Placer.of(trained("IVF16_HNSW32,PQ16x4fs", x)) is None
    assert Placer.of(trained("IDMap2,Flat", x)) is None
    assert Placer.of(trained("IVF16,PQ16x4fs", x)) is not None


def test_a_placer_fills_empty_copies_only() -> None:
    import faiss

    x = cone(2_000, 20)
    template = trained("IVF16,PQ16x4fs", x)
    placer = Placer.of(template)
    assert placer is not None
    batch = faiss.clone_index(template)
    placer.fill(batch, np.arange(10, dtype=np.int64), x[:10])
    with pytest.raises(ValueError, match="empty copy"):
        placer.fill(batch, np.arange(10, 20, dtype=np.int64), x[10:20])


def test_placing_leaves_faiss_its_threads() -> None:
    """As the training (tests/test_kmeans.py): torch loaded first, a thread's first torch op
    sets its OpenMP team to torch's default (the daemon's: one core of two); an import thread
    whose adds are placed must keep FAISS's team for its merges and searches after."""
    out = faiss_threads_after(
        "from imgsearch.index.codes import encoded\n"
        "from imgsearch.index.placing import Placer\n"
        'template = faiss.index_factory(64, "IVF30,PQ32x4fs", faiss.METRIC_INNER_PRODUCT)\n'
        "template.train(x)",
        "encoded(template, np.arange(3000), x, Placer.of(template))",
    )
    assert "faiss threads after 2" in out, out


def test_an_empty_copy_shares_the_quantizer_and_encodes_as_a_full_one() -> None:
    """empty_copy: no copy of the coarse quantizer (82 MB at 16,000 x 1280-d, most of an add
    of one image), the very codes a full copy (faiss.clone_index) encodes, and the template
    kept alive by the copy (its quantizer is the template's)."""
    import gc

    import faiss

    from imgsearch.index.codes import empty_copy

    x = cone(4_000, 30)
    template = trained("IVF40,PQ32x4fs", x[:2_000])
    ids = np.arange(2_000, dtype=np.int64)
    light, full = empty_copy(template), faiss.clone_index(template)
    quantizer = faiss.extract_index_ivf(template).quantizer
    shared = faiss.extract_index_ivf(light).quantizer
    assert int(faiss.downcast_index(shared).get_xb()) == int(
        faiss.downcast_index(quantizer).get_xb()
    )
    assert int(faiss.downcast_index(faiss.extract_index_ivf(full).quantizer).get_xb()) != int(
        faiss.downcast_index(quantizer).get_xb()
    )
    del template, quantizer, shared
    gc.collect()
    light.add_with_ids(x[2_000:], ids)
    full.add_with_ids(x[2_000:], ids)
    assert contents(light) == contents(full)
    assert empty_copy(trained("IVF16,Flat", x)).ntotal == 0  # other kinds: a full copy


def _library(tmp_path: Any, policy: Any, x: np.ndarray) -> Any:
    """A catalog of `x` under `policy`, its index trained on all of them and saved."""
    from imgsearch.catalog import Catalog

    catalog = Catalog(tmp_path, "m", CONE_DIM, policy)
    with catalog.index.hold():
        _put(catalog, x)
    catalog.index.maintain()
    return catalog


def _put(catalog: Any, x: np.ndarray, start: int = 0) -> list[int]:
    from imgsearch.store import FileFacts, NewImage

    items = [
        NewImage(FileFacts(f"/v/{start + i}.jpg", 1, 1, f"h{start + i}", 1, 1), v)
        for i, v in enumerate(x)
    ]
    return list(catalog.put(items).ids)


@pytest.mark.usefixtures("any_tree")
def test_a_restarted_index_makes_its_placer_once_the_daemon_answers(tmp_path: Any) -> None:
    """A start from a saved base makes no placer (its tree of the centres: 0.6 s at 16,384
    lists, spent beside the model's load): warm() makes it on a thread. Adds before it are
    placed by FAISS, and every add is found either way. A start that replays more rows than
    the hold's bound encodes them, so it makes the placer at once."""
    import threading

    from imgsearch.catalog import Catalog
    from imgsearch.index import Policy
    from imgsearch.index.tree import CentreTree

    policy = Policy(exact_max=100, delta_max=1 << 40, tree_from=1, held_delta_max=50)
    x = cone(1_700, 30)
    catalog = _library(tmp_path, policy, x[:1_500])
    assert isinstance(getattr(catalog.index._segments.placer, "centres", None), CentreTree)
    catalog.close()
    again = Catalog(tmp_path, "m", CONE_DIM, policy)
    try:
        seg = again.index._segments
        assert seg.placer is None and seg.coded  # nothing to replay: no placer yet
        early = _put(again, x[1_500:1_540], start=1_500)  # placed by FAISS
        again.index.warm()
        for thread in [t for t in threading.enumerate() if t.name == "index-place"]:
            thread.join(30)
        assert isinstance(getattr(seg.placer, "centres", None), CentreTree)
        late = _put(again, x[1_540:1_600], start=1_540)  # placed by the tree
        found = again.index.search(x[1_500:1_600], 1)[1][:, 0]
        np.testing.assert_array_equal(found, early + late)
    finally:
        again.close()
    third = Catalog(tmp_path, "m", CONE_DIM, policy)  # 100 rows to replay, over the bound
    try:
        seg = third.index._segments
        assert seg.coded and isinstance(getattr(seg.placer, "centres", None), CentreTree)
        assert seg.recent.ntotal == 100
    finally:
        third.close()


@pytest.mark.usefixtures("any_tree")
def test_a_compaction_right_after_a_start_places_the_replayed_rows(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows replayed exactly at a start are folded into the base by the worker soon after,
    perhaps before warm() made the start's placer: the compaction makes it then, so those rows
    are placed by the tree, not by FAISS's scan of every centre."""
    from imgsearch.catalog import Catalog
    from imgsearch.index import Policy

    policy = Policy(exact_max=100, delta_max=1 << 40, tree_from=1, settle_min=10)
    x = cone(1_600, 30)
    catalog = _library(tmp_path, policy, x[:1_500])
    ids = _put(catalog, x[1_500:], start=1_500)
    catalog.close()
    again = Catalog(tmp_path, "m", CONE_DIM, policy)
    try:
        seg = again.index._segments
        assert seg.placer is None and not seg.coded and seg.recent.ntotal == 100
        filled: list[int] = []
        real_fill = Placer.fill
        monkeypatch.setattr(
            Placer, "fill", lambda self, *a: filled.append(len(a[1])) or real_fill(self, *a)
        )
        assert again.index.maintain() == "compact"
        assert filled == [100]
        found = again.index.search(x[1_500:], 1)[1][:, 0]
        np.testing.assert_array_equal(found, ids)
    finally:
        again.close()
