"""A search that stops probing once its candidates stop improving.

A fixed nprobe is set by the tuning's hardest queries: most queries find their neighbours in
their first lists, a few far down theirs. A staged search scans its lists in their order of
centre similarity, STAGE_LISTS at first, then stages of at least STAGE_LISTS (and at least
STAGE_GROWTH of the lists scanned so far), and stops once `patience` stages in a row brought
no candidate into its running best (BEST_PER_RESULT x the results asked for, by the codes'
scores), or its lists run out (the
base's tuned nprobe, as a cap: STAGED_CAP x the fixed nprobe that meets the goal).

On 1M clustered vectors (lists shaped like hubs: a few near the rows' mean hold most rows and
every query probes them) the staged rule met recall@10 0.98 comparing 1.87x fewer codes than a
fixed nprobe; on 1M of the real embeddings' spectrum 1.11x (bench/probe_stop.py). The tuning
(tuning.py) measures both on its queries and keeps the staged rule only where it compares
under STAGED_SHARE of the fixed rule's codes, so a library like the second is searched as
before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

STAGE_LISTS = 32
STAGE_GROWTH = 0.25
STAGED_CAP = 2
STAGED_SHARE = 0.8
# The running best a stage must enter: this many times the results asked for (at 3M clustered,
# 50 for 10 results met 0.97 at 875k codes a query where 10 met 0.95 at 828k).
BEST_PER_RESULT = 5
# Patience the tuning tries (each one a search of its queries): a staged search of the
# largest probes all of its cap but for queries whose best stay put for 16 stages.
PATIENCES = (1, 2, 3, 4, 6, 8, 12, 16)

# scan(rows, lists, dist): the best k of the given queries' (rows') given lists
Scan = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def stages(cap: int) -> list[tuple[int, int]]:
    """The stages' (first, end) list positions up to `cap` lists."""
    out, done = [], 0
    while done < cap:
        end = min(cap, done + max(STAGE_LISTS, int(done * STAGE_GROWTH)))
        out.append((done, end))
        done = end
    return out


def staged(
    scan: Scan, lists: np.ndarray, dist: np.ndarray, k: int, patience: int, results: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(similarities, ids, lists probed) of each query (a row of `lists`, its lists in their
    order, and `dist`, their centres' similarities): its best k, best first, -1 padded, from
    the lists probed in stages until `patience` stages in a row brought none of its
    candidates into its running best BEST_PER_RESULT x `results` (at most k)."""
    n, cap = lists.shape
    best = max(1, min(BEST_PER_RESULT * results, k))
    sims = np.full((n, k), -np.inf, np.float32)
    ids = np.full((n, k), -1, np.int64)
    done = np.zeros(n, np.int64)
    quiet = np.zeros(n, np.int64)
    active = np.arange(n)
    for first, end in stages(cap):
        found_s, found_i = scan(active, lists[active, first:end], dist[active, first:end])
        found_s = np.where(found_i < 0, -np.inf, found_s)
        held_s, held_i = sims[active], ids[active]
        # the running best's last score (-inf while it is not full): what a stage must beat
        floor = -np.partition(-held_s, best - 1, axis=1)[:, best - 1]
        better = (found_s > floor[:, None]).any(axis=1)
        quiet[active] = np.where(better, 0, quiet[active] + 1)
        done[active] = end
        both_s = np.concatenate([held_s, found_s], axis=1)
        both_i = np.concatenate([held_i, found_i], axis=1)
        top = np.argpartition(-both_s, k - 1, axis=1)[:, :k]
        sims[active] = np.take_along_axis(both_s, top, axis=1)
        ids[active] = np.take_along_axis(both_i, top, axis=1)
        active = active[quiet[active] < patience]
        if not len(active):
            break
    order = np.argsort(-sims, axis=1, kind="stable")
    sims, ids = np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return sims, np.where(np.isfinite(sims), ids, -1), done


def unprobed(lists: np.ndarray, done: np.ndarray) -> np.ndarray:
    """`lists` with each row's lists past its `done` first set to -1 (FAISS skips them)."""
    out = np.array(lists, np.int64)
    out[np.arange(out.shape[1])[None, :] >= done[:, None]] = -1
    return out


def codes(sizes: np.ndarray, lists: np.ndarray, done: np.ndarray | None = None) -> float:
    """The mean codes a query compares probing its first `done` (else every one) of `lists`
    (ranked rows of list numbers, -1 for none), lists holding `sizes` codes."""
    probed = lists if done is None else unprobed(lists, done)
    return float(np.where(probed >= 0, sizes[np.maximum(probed, 0)], 0).sum() / max(1, len(lists)))
