"""The IVF lists' k-means in bfloat16 (imgsearch.index.kmeans) against FAISS's float32 one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch.config import Config
from imgsearch.index import assigning, kmeans

from .helpers import CONE_DIM as DIM
from .helpers import cone, faiss_threads_after, quality


def test_bf16_k_means_lists_are_as_good_as_faiss_float32_ones() -> None:
    import faiss

    x, k = cone(8_000, 60), 80
    ours = kmeans.spherical(x, k, kmeans.ITERATIONS, seed=3)
    assert ours.shape == (k, DIM) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    km = faiss.Kmeans(DIM, k, niter=kmeans.ITERATIONS, spherical=True, seed=3)
    km.train(x)
    (got, sizes), (want, faiss_sizes) = quality(x, ours), quality(x, km.centroids)
    assert got >= want - 0.002, (got, want)
    assert (sizes > 0).all()  # every list holds vectors (an emptied one was split)
    assert sizes.max() <= 1.5 * faiss_sizes.max(), (sizes.max(), faiss_sizes.max())
    np.testing.assert_array_equal(ours, kmeans.spherical(x, k, kmeans.ITERATIONS, seed=3))


@pytest.mark.parametrize("lists", [300, 1_100, 2_100])
def test_the_assignment_is_the_float32_best_despite_bfloat16_ties(lists: int) -> None:
    """bfloat16 rounds scores near 0.8 to steps of ~0.004: an argmax over them alone would send
    the tied rows to the lowest-numbered centre (measured: lists grew 1.4x more uneven). From
    GROUPED_FROM centres the candidates come from the best groups of them (2,100: the last
    group filled up with repeats of the first centres); under FLOAT32_UNDER (300) every
    score is float32, and the answer is float32's exactly."""
    import torch

    assert (lists >= assigning.GROUPED_FROM) == (lists > 2_000) and lists % assigning.GROUPS
    assert (lists < assigning.FLOAT32_UNDER) == (lists == 300)
    x = cone(6_000, 40, seed=1)
    centres = cone(lists, 40, seed=2)
    low = torch.from_numpy(x).to(torch.bfloat16)
    made = assigning.Centres(centres)
    got = made.assign(torch.from_numpy(x), low).numpy()
    want = (x @ centres.T).argmax(axis=1)
    rough = torch.mm(low, torch.from_numpy(centres).to(torch.bfloat16).T).argmax(dim=1).numpy()
    assert (rough != want).mean() > 0.01  # the data does tie in bfloat16 ...
    assert (got != want).mean() <= 0.001  # ... and the float32 pass settles it
    if lists < assigning.FLOAT32_UNDER:
        assert made.columns.dtype == torch.float32 and (got == want).all()
        np.testing.assert_array_equal(made.nearest(x), want)
    else:
        assert made.columns.dtype == torch.bfloat16


@pytest.mark.parametrize("lists", [1_100, 2_100])
def test_the_rows_offset_makes_the_bfloat16_scores_fine_enough_to_rank(lists: int) -> None:
    """Each row is scored minus an offset near its best score (assigning.OFFSET_ROWS), where
    bfloat16 steps are finer: its single best candidate misses float32's best ~3x less often
    than the plain bfloat16 product's best (1.4% against 4-5% here; without the offset one
    candidate misses as often). Nothing is assigned for no rows."""
    import torch

    x = cone(6_000, 40, seed=1)
    centres = cone(lists, 40, seed=2)
    low = torch.from_numpy(x).to(torch.bfloat16)
    want = (x @ centres.T).argmax(axis=1)
    rough = torch.mm(low, torch.from_numpy(centres).to(torch.bfloat16).T).argmax(dim=1).numpy()
    one = assigning.Centres(centres, candidates=1).assign(torch.from_numpy(x), low).numpy()
    assert (rough != want).mean() > 0.01
    assert (one != want).mean() < (rough != want).mean() / 2.5, (one != want).mean()
    made = assigning.Centres(centres)
    assert made.assign(
        torch.zeros((0, DIM)), torch.zeros((0, DIM), dtype=torch.bfloat16)
    ).shape == (0,)


def test_the_offset_comes_from_rows_spread_through_a_sorted_batch() -> None:
    """An import's batch may come sorted (a folder of near-copies of a few images first): an
    offset taken from its first rows alone would sit far from the others' best scores (here
    ~1.0 against ~0.3), where bfloat16 steps are coarser than with no offset at all (one
    candidate then missed float32's best for 8-10% of the other rows, 1.4% with the offset
    from rows spread through the batch); the default candidates settle every row."""
    import torch

    lists = 2_100
    centres = cone(lists, 40, seed=2)
    rng = np.random.default_rng(3)
    copies = centres[rng.integers(0, lists, 600)] + 0.01 * rng.standard_normal((600, DIM))
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    x = np.concatenate([copies, cone(6_000, 40, seed=1)]).astype(np.float32)
    low = torch.from_numpy(x).to(torch.bfloat16)
    want = (x @ centres.T).argmax(axis=1)
    one = assigning.Centres(centres, candidates=1).assign(torch.from_numpy(x), low).numpy()
    assert (one[600:] != want[600:]).mean() < 0.03
    got = assigning.Centres(centres).assign(torch.from_numpy(x), low).numpy()
    assert (got != want).mean() <= 0.001


def test_k_means_goes_on_from_given_centres() -> None:
    """`init`: the centres a run starts from (bench/ivf_reach.py refines a two-level
    clustering with it); the seed no longer picks them, and a step never loses objective."""
    x, k = cone(6_000, 40), 50
    start = kmeans.spherical(x, k, 2, seed=3)
    on = kmeans.spherical(x, k, 2, seed=4, init=start)
    np.testing.assert_array_equal(on, kmeans.spherical(x, k, 2, seed=5, init=start))
    assert not np.array_equal(on, kmeans.spherical(x, k, 2, seed=4))
    assert quality(x, on)[0] >= quality(x, start)[0] - 1e-4
    with pytest.raises(ValueError, match="from"):
        kmeans.spherical(x, k + 1, 2, seed=4, init=start)


@pytest.mark.parametrize("bf16", [False, True])
def test_two_level_lists_are_nearly_as_good_as_flat_ones(bf16: bool) -> None:
    """kmeans.two_level (the policy's training from TWO_LEVEL_MIN_LISTS): sqrt(k) clusters,
    each split, then REFINE_ITERATIONS over every list. Its objective comes close to ten flat
    iterations' (the split alone is below both, and the refinement gains), every list
    holds vectors, and the same seed gives the same lists; FAISS's float32 k-means or the
    bfloat16 one."""
    x, k = cone(12_000, 150, seed=5), 200
    flat = quality(x, kmeans.spherical(x, k, kmeans.ITERATIONS, seed=3))[0]
    split = kmeans.two_level(x, k, bf16, seed=3, refine=0)
    ours = kmeans.two_level(x, k, bf16, seed=3)
    assert ours.shape == (k, DIM) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    (got, sizes), rough = quality(x, ours), quality(x, split)[0]
    assert rough < got and got >= flat - 5e-4, (rough, got, flat)  # 0.9599 / 0.9617 / 0.9606
    assert (sizes > 0).all()
    np.testing.assert_array_equal(ours, kmeans.two_level(x, k, bf16, seed=3))


def test_two_level_shares_add_up_to_the_lists() -> None:
    """Each coarse cluster's lists: in proportion to its size by largest remainders, at least
    one for any member, never more than its members, none for an empty cluster (FAISS's own
    helper rounded small clusters to 0 lists and failed)."""
    for sizes, lists in [
        ([5000, 3, 1, 0, 996], 100),
        ([10, 10, 10], 30),
        ([1, 1, 1, 997], 4),
        ([7, 2], 5),
        ([400, 300, 200, 100], 10),
    ]:
        got = kmeans._shares(np.asarray(sizes), lists)
        assert got.sum() == lists, (sizes, got)
        assert ((got >= 1) == (np.asarray(sizes) > 0)).all() and (got <= sizes).all(), got
    assert kmeans._shares(np.asarray([400, 300, 200, 100]), 10).tolist() == [4, 3, 2, 1]
    assert kmeans._shares(np.asarray([5000, 3, 1, 0, 996]), 100).tolist() == [82, 1, 1, 0, 16]


def test_training_goes_two_level_from_the_policy_s_lists(caplog: pytest.LogCaptureFixture) -> None:
    """kmeans.train: flat below `two_level_from` lists, two-level from it (either precision);
    the index comes out trained with that many lists."""
    import logging

    import faiss

    x = cone(4_000, 60)
    for bf16, two_level_from, said in [
        (False, 1, "k-means (two-level, fp32)"), (True, 1, "k-means (two-level, bf16)"),
        (True, 41, "k-means (bf16)"), (False, 41, None),
    ]:  # fmt: skip
        caplog.clear()
        index = faiss.index_factory(DIM, "IVF40,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
        with caplog.at_level(logging.INFO, "imgsearch.index.kmeans"):
            kmeans.train(index, x, bf16, seed=0, two_level_from=two_level_from)
        assert index.is_trained and faiss.extract_index_ivf(index).quantizer.ntotal == 40
        if said is None:  # FAISS's own k-means inside index.train
            assert "k-means (" not in caplog.text, caplog.text
        else:
            assert said in caplog.text, caplog.text


@pytest.mark.parametrize(
    ("bf16", "two_level_from", "tree_from"),
    [(True, 1, kmeans.NEVER), (False, 1, 40), (True, 41, kmeans.NEVER), (False, 41, 40)],
)
def test_training_hands_back_each_row_s_list_from_its_last_iteration(
    bf16: bool, two_level_from: int, tree_from: int
) -> None:
    """kmeans.train returns each sample row's list as its last iteration assigned it (what the
    rotation's fit takes instead of searching every centre again): nearly always the row's
    nearest trained centre, and otherwise one nearly as near; None where FAISS's own k-means
    ran (no two-level, no bfloat16, no tree)."""
    import faiss

    x = cone(6_000, 60, seed=2)
    index = faiss.index_factory(DIM, "IVF40,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    lists = kmeans.train(index, x, bf16, 0, two_level_from, tree_from, codes=False)
    assert lists is not None and lists.shape == (len(x),) and lists.dtype == np.int64
    quantizer = faiss.extract_index_ivf(index).quantizer
    best_sims, best = quantizer.search(x, 1)
    centres = quantizer.reconstruct_n(0, 40)
    assert (lists == best[:, 0]).mean() >= 0.9, (lists == best[:, 0]).mean()
    lost = best_sims[:, 0] - np.einsum("ij,ij->i", x, centres[lists])
    assert lost.min() >= -1e-5 and lost.mean() < 0.002, lost.mean()
    plain = faiss.index_factory(DIM, "IVF40,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    assert kmeans.train(plain, x, False, 0, 41) is None and plain.is_trained


def test_two_level_fits_its_coarse_clusters_on_a_sample_of_the_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The coarse clusters of a two-level training are fitted on COARSE_ROWS_PER_CLUSTER rows
    each at most (FAISS's own subsampling), then every row is split by them: lists as good
    as those fitted on every row."""
    x, k = cone(30_000, 150, seed=7), 400  # 20 coarse clusters: 5,120 rows fit them
    fits: list[tuple[int, int]] = []
    real_kmeans = kmeans._kmeans

    def recorded(rows: np.ndarray, clusters: int, *args: object, **kwargs: object) -> object:
        fits.append((len(rows), clusters))
        return real_kmeans(rows, clusters, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kmeans, "_kmeans", recorded)
    ours = quality(x, kmeans.two_level(x, k, True, seed=3))[0]
    assert fits[0] == (20 * kmeans.COARSE_ROWS_PER_CLUSTER, 20), fits[0]
    splits = [n for n, lists in fits[1:] if lists < k]  # (then the refining, every row)
    assert sum(splits) <= len(x)  # then each coarse cluster's own rows
    monkeypatch.undo()
    real = kmeans.COARSE_ROWS_PER_CLUSTER
    try:
        kmeans.COARSE_ROWS_PER_CLUSTER = len(x)  # every row
        whole = quality(x, kmeans.two_level(x, k, True, seed=3))[0]
    finally:
        kmeans.COARSE_ROWS_PER_CLUSTER = real
    assert ours >= whole - 0.002, (ours, whole)


def test_too_few_vectors_for_the_lists_is_refused() -> None:
    with pytest.raises(ValueError, match="k-means of 10 vectors into 20 lists"):
        kmeans.spherical(cone(10, 2), 20, 2, seed=0)


@pytest.mark.parametrize(
    ("precision", "native", "expected"),
    [("auto", True, True), ("bf16", True, True), ("fp32", True, False), ("auto", False, False)],
)
def test_the_index_trains_in_bf16_where_the_cpu_and_the_precision_allow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, precision: str, native: bool, expected: bool
) -> None:
    import imgsearch.config as config_module

    monkeypatch.setattr(config_module, "native_bf16", lambda: native)
    config = Config(data_dir=tmp_path, precision=precision)
    assert config.index_policy().train_bf16 is expected


def test_training_leaves_faiss_its_threads() -> None:
    """Where torch is loaded first (the daemon loads the model before the index), FAISS's
    OpenMP calls bind to torch's runtime, and torch's first op in a thread sets that thread's
    team to torch's default (the daemon's: half the cores): the index worker's adds and
    tuning after a bf16 k-means ran on one core (the 10M training's add and tuning took 2.2x
    as long). The worker's FAISS team size must come out of the training as it went in. (A
    fresh interpreter: this one may have loaded FAISS first.)"""
    out = faiss_threads_after(
        "from imgsearch.index import kmeans",
        'index = faiss.index_factory(64, "IVF30,Flat", faiss.METRIC_INNER_PRODUCT)\n'
        "kmeans.train(index, x, True, seed=0, two_level_from=1 << 30)",
    )
    assert "faiss threads after 2" in out, out


def test_fewer_lists_than_candidates() -> None:
    x = cone(40, 3)
    centres = kmeans.spherical(x, 3, kmeans.ITERATIONS, seed=0)
    assert centres.shape == (3, DIM)
    assert (quality(x, centres)[1] > 0).all()


def test_the_column_max_of_bfloat16_scores_is_amax_s_for_any_signs() -> None:
    """The max read from the scores' int16 bits: the same bits as torch's amax where a column
    holds positive scores only, negative only (the order of their bits reversed), both, or
    zeros of either sign; fails if negative columns take the int16 max."""
    import torch

    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.normal(0, 0.05, (64, 8, 32)).astype(np.float32))
    scores[:16] += 1  # all positive
    scores[16:32] -= 1  # all negative
    scores[40, :, 0], scores[41, :, 1] = -0.0, 0.0
    scores[42, :, 2] = torch.tensor([-0.0] + [-1.0] * 7)
    x = scores.to(torch.bfloat16)
    want = x.amax(dim=1)
    got = assigning._column_max(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize(
    ("bf16", "tree_from", "worth"),
    [(True, kmeans.NEVER, 0.0), (False, 40, math.inf), (False, 40, 0.0)],
)  # the bfloat16 product; a tree; FAISS's search where the tree is not worth it
def test_a_training_stops_at_its_next_block_of_rows_once_told(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, tree_from: int, worth: float
) -> None:
    """A daemon stopping during a training's k-means (~40 s an iteration at 16,000 lists of
    1280-d) is not kept waiting for it: an iteration assigns ASSIGN_ROWS rows at a time,
    and once the stop is set the next block raises Stopped instead."""
    import threading

    import faiss

    from imgsearch.index import tree
    from imgsearch.index.stopping import Stopped

    monkeypatch.setattr(kmeans, "ASSIGN_ROWS", 1_000)
    monkeypatch.setattr(tree, "MAX_SHARE_WORTH", worth)
    x = cone(6_000, 60, seed=2)
    stop, blocks, stop_after = threading.Event(), [0], [1 << 30]

    def counting(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            blocks[0] += 1
            if blocks[0] == stop_after[0]:
                stop.set()  # told while this block is assigned
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(faiss, "knn", counting(faiss.knn))
    monkeypatch.setattr(assigning.Centres, "assign", counting(assigning.Centres.assign))
    monkeypatch.setattr(tree.CentreTree, "assign", counting(tree.CentreTree.assign))
    index = faiss.index_factory(DIM, "IVF40,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    kmeans.train(index, x, bf16, 0, 1, tree_from, codes=False, stop=stop)
    assert faiss.extract_index_ivf(index).quantizer.ntotal == 40
    whole = blocks[0]  # every block of a two-level training not stopped
    assert whole >= kmeans.REFINE_ITERATIONS * 6
    blocks[0], stop_after[0] = 0, whole - 4  # in the last refining iteration
    index = faiss.index_factory(DIM, "IVF40,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    with pytest.raises(Stopped):
        kmeans.train(index, x, bf16, 0, 1, tree_from, codes=False, stop=stop)
    assert blocks[0] == whole - 4
    assert faiss.extract_index_ivf(index).quantizer.ntotal == 0


@pytest.mark.parametrize("worth", [0.0, math.inf])
def test_a_tree_not_worth_it_is_made_once_a_k_means(
    monkeypatch: pytest.MonkeyPatch, worth: float
) -> None:
    """A tree of centres rejected (CentreTree.worth) is not made again at every iteration (~1.5
    s each at 16,000 x 1280-d): every iteration assigns by FAISS's float32 search (no bfloat16
    here), as a k-means without a tree does. One that is worth it is made for each iteration's
    centres."""
    from imgsearch.index import tree

    monkeypatch.setattr(tree, "MAX_SHARE_WORTH", worth)
    made = [0]
    real = tree.CentreTree.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        made[0] += 1
        real(self, *args, **kwargs)

    monkeypatch.setattr(tree.CentreTree, "__init__", counted)
    x = cone(4_000, 40, seed=3)
    through, lists = kmeans._spherical(x, 40, 4, 0, tree_from=40, bf16=False)
    assert made[0] == (1 if worth == 0.0 else 4)
    if worth == 0.0:  # every iteration by FAISS's search, as without a tree
        plain, plain_lists = kmeans._spherical(x, 40, 4, 0, bf16=False)
        assert lists is not None and plain_lists is not None
        assert np.array_equal(lists, plain_lists) and np.array_equal(through, plain)


@pytest.mark.parametrize(("bf16", "two_level_from"), [(False, 1 << 30), (True, 100)])
def test_centred_lists_rank_by_each_row_s_direction_from_the_mean(
    bf16: bool, two_level_from: int
) -> None:
    """Policy.centred: the lists of embedding-like rows (one shared direction) are trained on
    the rows less their mean, and kept as the mean plus each list's direction at one length
    in an L2 quantizer under the inner-product index, so FAISS's own assignment of rows as
    they are (an add's, a query's probing) ranks the lists by the row's direction from the
    mean. The sample is handed back unchanged, and every list holds rows."""
    import faiss

    from imgsearch.index import coarse

    x, lists = cone(12_000, 60, seed=4), 120
    sample = x.copy()
    index = faiss.index_factory(DIM, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    kmeans.train(index, sample, bf16, 3, two_level_from, codes=False, centred=True)
    np.testing.assert_allclose(sample, x, atol=1e-6)
    ivf = faiss.extract_index_ivf(index)
    assert ivf.metric_type == faiss.METRIC_INNER_PRODUCT and coarse.centred(index)
    assert ivf.quantizer.metric_type == faiss.METRIC_L2
    centres = ivf.quantizer.reconstruct_n(0, lists)
    mean = x.mean(axis=0)
    radii = np.linalg.norm(centres - mean, axis=1)
    np.testing.assert_allclose(radii, radii[0], rtol=1e-4)
    by_faiss = ivf.quantizer.search(x, 1)[1][:, 0]
    by_direction = np.argmax((x - mean) @ (centres - mean).T, axis=1)
    assert np.mean(by_faiss == by_direction) > 0.999
    assert (np.bincount(by_faiss, minlength=lists) > 0).all()


def test_centred_lists_find_new_queries_neighbours_for_fewer_codes() -> None:
    """On embedding-like rows, queries probing centred lists compare fewer codes than
    probing lists trained on the rows as they are (the latter's biggest lists hold the rows
    nearest the mean, which most queries probe) for the same share of their true top 10."""
    import faiss

    x = cone(40_000, 200, seed=1)
    rng = np.random.default_rng(5)
    noise = 0.05 * rng.standard_normal((300, DIM)).astype(np.float32)
    queries = x[rng.choice(len(x), 300, replace=False)] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found: dict[bool, list[tuple[float, float]]] = {}
    for centred in (False, True):
        index = faiss.index_factory(DIM, "IVF200,Flat", faiss.METRIC_INNER_PRODUCT)
        kmeans.train(index, x[:10_000].copy(), True, 3, 1 << 30, codes=False, centred=centred)
        index.is_trained = True  # (IVF-Flat: nothing else to train)
        index.add(x)
        ivf = faiss.extract_index_ivf(index)
        found[centred] = []
        for nprobe in (4, 8):
            ivf.nprobe = nprobe
            faiss.cvar.indexIVF_stats.reset()
            hits = index.search(queries, 10)[1]
            codes = faiss.cvar.indexIVF_stats.ndis / len(queries)
            recall = np.mean(
                [len(np.intersect1d(h, t)) / 10 for h, t in zip(hits, truth, strict=True)]
            )
            found[centred].append((codes, float(recall)))
    for (codes, recall), (plain_codes, plain_recall) in zip(found[True], found[False], strict=True):
        assert codes < 0.9 * plain_codes and recall >= plain_recall - 0.01, found


def test_rows_without_a_mean_train_as_they_are() -> None:
    """A sample whose mean is (near) zero is not centred: its lists are trained as they would
    be without `centred`, in an inner-product quantizer."""
    import faiss

    half = cone(3_000, 20, seed=5)
    x = np.concatenate([half, -half])
    made = []
    for centred in (False, True):
        index = faiss.index_factory(DIM, "IVF40,Flat", faiss.METRIC_INNER_PRODUCT)
        kmeans.train(index, x.copy(), True, 3, 1 << 30, codes=False, centred=centred)
        quantizer = faiss.extract_index_ivf(index).quantizer
        assert quantizer.metric_type == faiss.METRIC_INNER_PRODUCT
        made.append(quantizer.reconstruct_n(0, 40))
    np.testing.assert_array_equal(made[0], made[1])
