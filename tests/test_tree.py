"""Rows assigned to lists through a tree of the centres (imgsearch.index.tree), in the
training's k-means and in the placer, and where the policy uses it."""

from __future__ import annotations

import numpy as np
import pytest

from imgsearch import config as config_module
from imgsearch.config import Config
from imgsearch.index import assigning, kmeans, tree
from imgsearch.index import policy as P
from imgsearch.index.codes import encoded
from imgsearch.index.placing import Placer
from imgsearch.index.tree import CentreTree

from .helpers import CONE_DIM as DIM
from .helpers import cone, contents, quality, trained


def best(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.asarray((x @ centres.T).argmax(axis=1))


def test_every_group_probed_is_exact_search(monkeypatch: pytest.MonkeyPatch) -> None:
    centres = kmeans.spherical(cone(6_000, 40, seed=1), 300, 3, seed=1)
    x = cone(5_000, 40, seed=2)
    monkeypatch.setattr(tree, "PROBES", 10_000)
    monkeypatch.setattr(tree, "BLOCK_ROWS", 700)  # several blocks, the last one short
    found = CentreTree(centres).nearest(x)
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, best(x, centres))


def test_the_best_groups_hold_nearly_every_rows_nearest_centre(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8 of ~sqrt(k) groups probed (under half the centres compared): the nearest centre for
    nearly every row, and where another, one scoring nearly as well; the same every time.
    (On 512-d embeddings, 16 of 128 groups: 99.7% nearest, docs/BENCHMARKS.md; this 64-d
    data's k-means is cruder.)"""
    monkeypatch.setattr(tree, "PROBES", 8)
    monkeypatch.setattr(tree, "GROUPS_PER_SQRT", 1.0)
    centres = kmeans.spherical(cone(20_000, 80, seed=1), 400, 3, seed=1)
    x = cone(6_000, 80, seed=2)
    t = CentreTree(centres)
    assert t.probes == 8 and len(t.starts) - 1 == 20 and t.project is None
    found = t.nearest(x)
    want = best(x, centres)
    scores = x @ centres.T
    lost = scores.max(axis=1) - scores[np.arange(len(x)), found]
    assert 0.9 <= (found == want).mean() < 1
    assert lost.mean() < 2e-3 and (lost >= 0).all()
    np.testing.assert_array_equal(found, CentreTree(centres).nearest(x))


@pytest.mark.usefixtures("any_tree")
def test_k_means_through_the_tree_is_as_good_as_through_every_centre() -> None:
    x, k = cone(12_000, 60, seed=4), 400
    flat = quality(x, kmeans.spherical(x, k, 4, seed=3))[0]
    ours = kmeans.spherical(x, k, 4, seed=3, tree_from=k)
    assert ours.shape == (k, DIM)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    objective, sizes = quality(x, ours)
    assert objective >= flat - 0.002
    assert sizes.min() > 0  # no empty list left


@pytest.mark.usefixtures("any_tree")
def test_training_goes_through_the_tree_from_tree_from_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kmeans.train (two-level or flat, with or without bfloat16) iterates over every list
    through the tree once the lists reach tree_from, and only then."""
    import faiss

    made: list[int] = []
    real = CentreTree.__init__

    def counting(
        self: CentreTree, centres: np.ndarray, seed: int = 1234, group_threads: int | None = 1
    ) -> None:
        assert group_threads is None  # the training's tree: on the training's team
        made.append(len(centres))
        real(self, centres, seed, group_threads)

    monkeypatch.setattr(CentreTree, "__init__", counting)
    x = cone(8_000, 40, seed=5)
    for bf16, two_level_from, tree_from, expect in [
        (False, 100, 200, 2),  # two-level: its 2 refining iterations over the 200 lists
        (False, 1 << 30, 200, kmeans.ITERATIONS),  # flat, no bfloat16: still through the tree
        (True, 100, 201, 0),
    ]:
        made.clear()
        index = faiss.index_factory(DIM, "IVF200,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
        kmeans.train(index, x, bf16, seed=0, two_level_from=two_level_from, tree_from=tree_from)
        assert made == [200] * expect
        assert faiss.extract_index_ivf(index).quantizer.ntotal == 200


@pytest.mark.usefixtures("any_tree")
def test_a_placer_uses_the_tree_from_tree_from_lists() -> None:
    """Over tree_from lists the placer's lists come from the tree (the nearest centre for
    nearly every row, the codes FAISS writes for that list); under it, bfloat16 or nothing."""
    import faiss

    x = cone(8_000, 60)
    template = trained("IVF64,PQ16x4fs", x[:4_000])
    placer = Placer.of(template, bf16=False, tree_from=64)
    assert placer is not None and isinstance(placer.centres, CentreTree)
    assert isinstance(Placer.of(template, bf16=True, tree_from=65).centres, assigning.Centres)  # type: ignore[union-attr]
    assert Placer.of(template, bf16=False, tree_from=65) is None
    ids = np.arange(4_000, dtype=np.int64)
    ours = contents(encoded(template, ids, x[4_000:], placer).index)
    theirs = contents(encoded(template, ids, x[4_000:]).index)
    centres = faiss.extract_index_ivf(template).quantizer.reconstruct_n(0, 64)
    want = best(x[4_000:], centres)
    assert np.mean([ours[i][0] == want[i] for i in ids.tolist()]) >= 0.97
    same = [i for i in ours if ours[i][0] == theirs[i][0]]
    assert all(ours[i][1] == theirs[i][1] for i in same)


@pytest.mark.parametrize("amx", [True, False])
def test_the_tree_is_used_where_the_cpu_has_no_amx(
    monkeypatch: pytest.MonkeyPatch, amx: bool
) -> None:
    monkeypatch.setattr(config_module, "native_amx", lambda: amx)
    policy = Config().index_policy()
    assert policy.tree_from == (P.NEVER if amx else P.TREE_FROM)
    assert policy.places == (policy.train_bf16 or not amx)
    assert not P.Policy().places  # the default: FAISS adds


def test_groups_no_centre_falls_in_are_dropped() -> None:
    """Centres in a few distinct directions (duplicates): most of the ~sqrt(k) groups get no
    centre; the tree keeps those that do and still finds each row's best direction."""
    distinct = cone(3, 3, seed=7)
    centres = np.repeat(distinct, 50, axis=0)  # 150 centres, 3 directions
    t = CentreTree(centres)
    assert len(t.columns) == len(t.starts) - 1 <= 3 and t.probes <= 3
    x = cone(500, 3, seed=8)
    found = t.nearest(x)
    np.testing.assert_allclose(
        (x * centres[found]).sum(axis=1), (x @ distinct.T).max(axis=1), atol=1e-5
    )


def spectral(x: np.ndarray) -> np.ndarray:
    """Rows whose variation falls along their k-th coordinate as k ** -1.2, unit length (as
    embeddings' does, bench/scale.py --dist spectral)."""
    shaped = x * np.arange(1, x.shape[1] + 1) ** -0.6
    return (shaped / np.linalg.norm(shaped, axis=1, keepdims=True)).astype(np.float32)


def test_members_are_compared_in_the_centres_leading_directions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Centres that differ along few directions: the members are compared in their leading
    principal directions, each row's CANDIDATES best group winners again whole: the nearest
    centre for nearly every row, otherwise one scoring nearly as well (every group probed
    here, so only the directions can miss); fewer directions miss more. Centres that differ
    along most directions are compared whole."""
    monkeypatch.setattr(tree, "PROBES", 10_000)
    centres = kmeans.spherical(spectral(cone(20_000, 80, seed=1)), 400, 3, seed=1)
    x = spectral(cone(6_000, 80, seed=2))
    want = best(x, centres)
    scores = x @ centres.T
    same, dims = {}, {}
    for kept in (0.9, 0.95):  # (these 64-d centres need more than half for the default)
        monkeypatch.setattr(tree, "VARIANCE_KEPT", kept)
        t = CentreTree(centres)
        assert t.project is not None
        dims[kept] = t.project.shape[1]
        np.testing.assert_allclose(t.project.T @ t.project, np.eye(dims[kept]), atol=1e-5)
        found = t.nearest(x)
        lost = scores.max(axis=1) - scores[np.arange(len(x)), found]
        same[kept] = (found == want).mean()
        assert (lost >= 0).all() and lost.mean() < 2e-3
    assert dims[0.9] < dims[0.95] <= DIM * tree.MAX_SHARE
    assert 0.8 <= same[0.9] < same[0.95] < 1
    flat = kmeans.spherical(cone(20_000, 80, seed=1), 400, 3, seed=1)
    t = CentreTree(flat)
    assert t.project is None
    np.testing.assert_array_equal(
        t.nearest(cone(6_000, 80, seed=2)), best(cone(6_000, 80, seed=2), flat)
    )


def test_the_groups_products_run_on_their_own_team(monkeypatch: pytest.MonkeyPatch) -> None:
    """The groups' small products run on GROUP_THREADS OpenMP threads, the larger products
    before them on the caller's team, which the caller has again afterwards; a tree made
    with group_threads None (the training's) runs them all on the caller's team."""
    import torch

    from imgsearch.cpu import torch_threads

    centres = kmeans.spherical(cone(6_000, 40, seed=1), 300, 3, seed=1)
    t = CentreTree(centres)
    teams: list[int] = []
    mm = torch.mm

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        teams.append(torch.get_num_threads())
        return mm(a, b)

    monkeypatch.setattr(torch, "mm", counted)
    with torch_threads(2):
        found = t.nearest(cone(2_000, 40, seed=2))
        assert torch.get_num_threads() == 2
    assert teams[0] == 2 and len(teams) > len(t.columns) // 2
    assert set(teams[-len(t.columns) // 2 :]) == {tree.GROUP_THREADS}
    assert (found == best(cone(2_000, 40, seed=2), centres)).mean() > 0.9
    teams.clear()
    with torch_threads(2):
        again = CentreTree(centres, group_threads=None).nearest(cone(2_000, 40, seed=2))
    assert set(teams) == {2}
    np.testing.assert_array_equal(again, found)


def compared_share(t: CentreTree, x: np.ndarray) -> float:
    """What assigning the rows `x` through `t` compares, as a share of every centre whole."""
    import torch

    probed = torch.mm(torch.from_numpy(x), t.means).topk(t.probes, dim=1).indices.numpy()
    members = np.diff(t.starts)[probed].sum(axis=1).mean()
    assert t.project is None  # (members compared whole)
    return float((len(t.columns) + members) / len(t))


def test_a_tree_s_share_is_what_rows_compare_and_says_whether_it_is_worth_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Centres spread over many clusters: a row is compared with a small share of them, and
    the share the tree estimates from its centres is near what rows compare. Where a row's
    probed groups hold every centre (as bench/scale.py's 1280-d lists crowd into a few big
    groups that every row probes), the tree says it is not worth it."""
    drawn = cone(11_000, 400, seed=1)
    spread, rows = drawn[:8_000], drawn[8_000:]
    t = CentreTree(spread)
    assert t.project is None and 0.05 < t.share < tree.MAX_SHARE_WORTH and t.worth
    assert abs(t.share - compared_share(t, rows)) < 0.25 * t.share
    monkeypatch.setattr(tree, "GROUPS_PER_SQRT", 0.1)  # 9 groups, every one probed
    crowded = CentreTree(spread)
    assert crowded.share > 1 and not crowded.worth
    assert crowded.share == pytest.approx(compared_share(crowded, rows))


def test_rows_are_assigned_as_under_tree_from_where_a_tree_is_not_worth_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A template of few lists makes a tree that compares every centre: its placer chooses
    lists by the bfloat16 product where the CPU has it, else leaves them to FAISS, and says
    so; a k-means through such trees assigns by FAISS's float32 search without bfloat16, as
    good as the float32 product of every centre."""
    x = cone(8_000, 60)
    template = trained("IVF64,PQ16x4fs", x[:4_000])
    with caplog.at_level("INFO", logger="imgsearch.index.assigning"):
        assert Placer.of(template, bf16=False, tree_from=64) is None
    assert "a tree of 64 centres would compare rows with" in caplog.text
    assert "FAISS's search instead" in caplog.text
    placer = Placer.of(template, bf16=True, tree_from=64)
    assert placer is not None and isinstance(placer.centres, assigning.Centres)
    assert isinstance(
        assigning.assigner(kmeans.spherical(x, 400, 2, seed=1), True, False), assigning.Centres
    )
    k = 300
    ours = kmeans.spherical(x, k, 3, seed=3, tree_from=k, bf16=False)  # FAISS's search
    flat = kmeans.spherical(x, k, 3, seed=3)  # every centre in float32 (under FLOAT32_UNDER)
    assert quality(x, ours)[0] >= quality(x, flat)[0] - 1e-4
    np.testing.assert_allclose(ours, flat, atol=1e-4)
