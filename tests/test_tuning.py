"""How the tuning picks nprobe and the re-scoring depth (imgsearch.index.tuning.choose), on recall
surfaces of known shape: the pair it picks against every pair measured, and the searches it
spends. (The tuning on real indexes: tests/test_index.py.)"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from imgsearch.index import policy as P
from imgsearch.index.tuning import choose

LISTS = 4096
PER_LIST = 40.0
SPEC = P.Spec("ivf-pqfs", "IVF4096,PQ32x4fs", LISTS)
TARGET = P.TARGET_RECALL
GOAL = TARGET + P.TUNE_MARGIN


def surface(ceiling: dict[int, float], scale: dict[int, float]) -> Callable[[int, int], float]:
    """Recall rising with nprobe towards each depth's ceiling, faster for deeper depths (as
    measured: more candidates re-scored, fewer lists needed; monotone in both)."""
    return lambda rescore, nprobe: ceiling[rescore] * (1 - math.exp(-nprobe / scale[rescore]))


def counted(recall: Callable[[int, int], float]) -> tuple[Callable[[int, int], float], list]:
    """`recall` and the distinct (depth, nprobe) pairs it was asked for: the searches the
    tuning makes (it caches each pair's recall)."""
    calls: list[tuple[int, int]] = []

    def measured(rescore: int, nprobe: int) -> float:
        if (rescore, nprobe) not in calls:
            calls.append((rescore, nprobe))
        return recall(rescore, nprobe)

    return measured, calls


def best_of_all(recall: Callable[[int, int], float]) -> tuple[int, float, float]:
    """What every (depth, nprobe) measured would pick: (tier, cost, recall) of the best."""
    best = (3, math.inf, 0.0)
    for rescore in (*P.RESCORE_FACTORS, P.DEEP_RESCORE):
        got = np.array([recall(rescore, n) for n in range(1, LISTS + 1)])
        for aim, tier in ((GOAL, 0), (TARGET, 1)):
            hits = np.flatnonzero(got >= aim)
            if len(hits):
                cost = (hits[0] + 1) * PER_LIST + rescore * P.RECALL_K * P.RESCORE_COST
                best = min(best, (tier, cost, float(got[hits[0]])))
                break
    return best


def cost_of(nprobe: int, rescore: int) -> float:
    return nprobe * PER_LIST + rescore * P.RECALL_K * P.RESCORE_COST


def test_depths_that_cannot_reach_the_goal_cost_one_search_each() -> None:
    """A library trained for a much bigger one (the 10M import's training at 262k rows): 4x
    and 10x re-scoring never reach the goal. Each costs one search, not a doubling of nprobe
    to all the lists (~13 searches each before); the pair is 25x at its smallest nprobe."""
    truth = surface(
        {4: 0.93, 10: 0.96, 25: 0.995, 100: 0.999}, {4: 300, 10: 250, 25: 200, 100: 150}
    )
    recall, calls = counted(truth)
    nprobe, got, rescore = choose(recall, SPEC, PER_LIST, TARGET)
    assert rescore == 25 and got >= GOAL
    smallest = next(n for n in range(1, LISTS) if truth(25, n) >= GOAL)
    assert smallest <= nprobe <= smallest * (1 + 2 / P.TUNE_PRECISION)
    per_depth = {d: sum(1 for r, _ in calls if r == d) for d in (4, 10, 25, 100)}
    assert per_depth[4] <= 1 and per_depth[10] <= 1 and per_depth[100] == 0, per_depth
    assert len(calls) <= 20, calls


def test_a_shallow_depth_that_is_cheaper_is_found() -> None:
    """When codes rank well, 4x re-scoring needs a few more lists than 25x but reads 6x fewer
    rows: it wins by the cost model, and the bisection stays between 25x's nprobe and the
    nprobe where 4x would cost as much."""
    recall = surface({4: 0.999, 10: 0.999, 25: 0.999, 100: 0.999}, {4: 26, 10: 25, 25: 24, 100: 23})
    nprobe, got, rescore = choose(recall, SPEC, PER_LIST, TARGET)
    tier, cost, _ = best_of_all(recall)
    assert rescore == 4 and tier == 0 and got >= GOAL
    assert cost_of(nprobe, rescore) <= cost * (1 + 2 / P.TUNE_PRECISION)


def test_deep_rescoring_is_tried_only_when_the_usual_depths_miss_the_goal() -> None:
    """Uniform-like codes: 25x reaches the target at best, 100x the goal: 100x is kept. Codes
    that meet the goal at 25x never search 100x."""
    poor, calls = counted(
        surface({4: 0.80, 10: 0.90, 25: 0.975, 100: 0.995}, {4: 900, 10: 900, 25: 800, 100: 600})
    )
    nprobe, got, rescore = choose(poor, SPEC, PER_LIST, TARGET)
    assert rescore == P.DEEP_RESCORE and got >= GOAL
    assert {r for r, _ in calls} >= {25, P.DEEP_RESCORE}
    good, calls = counted(
        surface(dict.fromkeys((4, 10, 25, 100), 0.999), dict.fromkeys((4, 10, 25, 100), 50.0))
    )
    choose(good, SPEC, PER_LIST, TARGET)
    assert P.DEEP_RESCORE not in {r for r, _ in calls}


def test_nothing_reaches_the_target_gives_the_best_recall() -> None:
    recall, calls = counted(
        surface({4: 0.5, 10: 0.6, 25: 0.7, 100: 0.8}, dict.fromkeys((4, 10, 25, 100), 100.0))
    )
    nprobe, got, rescore = choose(recall, SPEC, PER_LIST, TARGET)
    assert rescore == P.DEEP_RESCORE and nprobe == LISTS and got == pytest.approx(0.8, abs=1e-3)
    assert {r for r, _ in calls} == {25, P.DEEP_RESCORE}  # shallower ones cannot do better


def test_exact_codes_have_one_depth() -> None:
    recall, calls = counted(lambda rescore, nprobe: min(1.0, nprobe / 100))
    spec = P.Spec("ivf-flat", "IVF4096,Flat", LISTS)
    nprobe, got, rescore = choose(recall, spec, PER_LIST, TARGET)
    want = round(GOAL * 100)  # the smallest nprobe at the goal
    assert rescore == 0 and got >= GOAL and want <= nprobe <= want * (1 + 2 / P.TUNE_PRECISION)
    assert {r for r, _ in calls} == {0}


@pytest.mark.parametrize("seed", range(40))
def test_the_pick_is_as_cheap_as_measuring_every_pair(seed: int) -> None:
    """Random monotone surfaces: the pair picked is at the best tier, and costs what the best
    of every pair measured costs, within the bisection's precision."""
    rng = np.random.default_rng(seed)
    ceilings = np.sort(rng.uniform(0.9, 1.0, 4))  # deeper depths reach higher
    scales = np.sort(rng.uniform(5, 2000, 4))[::-1]  # ... and sooner
    depths = (*P.RESCORE_FACTORS, P.DEEP_RESCORE)
    truth = surface(
        dict(zip(depths, ceilings, strict=True)), dict(zip(depths, scales, strict=True))
    )
    recall, calls = counted(truth)
    nprobe, got, rescore = choose(recall, SPEC, PER_LIST, TARGET)
    tier, cost, _ = best_of_all(truth)
    assert (0 if got >= GOAL else 1 if got >= TARGET else 2) == min(tier, 2)
    if tier < 2:
        assert cost_of(nprobe, rescore) <= cost * (1 + 2 / P.TUNE_PRECISION) + PER_LIST
    assert len(calls) <= 45


@pytest.mark.parametrize(("target", "goal"), [(0.97, 0.98), (0.99, 1.0), (0.9, 0.93), (0.5, 0.65)])
def test_a_lower_target_aims_a_larger_share_of_its_misses_above_it(
    target: float, goal: float
) -> None:
    """--recall below the default: the tuning aims at 0.3 of the misses above it (at least
    TUNE_MARGIN): nprobe is the smallest reaching that goal, which exact codes show plainly."""
    assert P.tune_margin(target) + target == pytest.approx(goal) or goal == 1.0
    recall = lambda rescore, nprobe: min(1.0, nprobe / 1000)  # noqa: E731
    spec = P.Spec("ivf-flat", "IVF4096,Flat", LISTS)
    nprobe, got, _ = choose(recall, spec, PER_LIST, target)
    want = math.ceil(goal * 1000)
    assert got >= goal - 1e-9 and want <= nprobe <= want * (1 + 2 / P.TUNE_PRECISION)


def test_doubling_starts_from_a_share_of_the_lists_and_bisects_below_it_when_enough() -> None:
    """nprobe 1, 2, 4 ... a share of the lists are never enough for a big library, and each
    search re-scores as many rows as any other: the doubling starts at tune_start. Where that
    is more than enough, the bisection still finds the smallest nprobe below it."""
    start = P.tune_start(LISTS)
    assert 1 < start < LISTS
    slow = surface(dict.fromkeys((4, 10, 25, 100), 0.999), dict.fromkeys((4, 10, 25, 100), 150.0))
    recall, calls = counted(slow)
    nprobe, got, _ = choose(recall, SPEC, PER_LIST, TARGET)
    assert got >= GOAL and min(n for _, n in calls) >= start
    assert calls[0] == (max(P.RESCORE_FACTORS), start)
    fast = surface(dict.fromkeys((4, 10, 25, 100), 0.999), dict.fromkeys((4, 10, 25, 100), 0.8))
    recall, calls = counted(fast)
    nprobe, got, rescore = choose(recall, SPEC, PER_LIST, TARGET)
    smallest = next(n for n in range(1, LISTS) if fast(rescore, n) >= GOAL)
    assert got >= GOAL and smallest <= nprobe < start
