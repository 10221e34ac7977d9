"""What background work the library's index owes, decided from one look at its state.

The index's worker asks these between its waits; a bulk writer asks how many recent rows it
may pile up. Every answer reads one `Look` (the segments of the moment and the imports in
progress) and the policy's thresholds, so it is a plain function of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy import QUANTIZED, Policy, tuning_goal
from .segments import Segments


@dataclass(frozen=True)
class Look:
    """The index as the worker sees it at one moment."""

    seg: Segments
    dim: int
    count: int  # vectors searches find (the store's while the first base is built)
    holds: int  # bulk imports in progress
    planned: int  # the library's size when they are done (0: no import said)

    @property
    def target(self) -> int:
        """The size to train for: the library's, or what the imports in progress make it."""
        return max(self.count, self.planned)

    @property
    def recent(self) -> int:
        return int(self.seg.recent.ntotal)


def held_limit(policy: Policy, look: Look) -> int:
    """Recent rows an import may keep out of the base (policy.held_limit for this index)."""
    sample = policy.train_at(look.target, look.dim) if look.planned else 0
    return policy.held_limit(look.seg.coded, len(look.seg.base), sample)


def held(policy: Policy, look: Look) -> bool:
    """An import defers compaction: it runs and the recent segment is within its bound."""
    return look.holds > 0 and look.recent <= held_limit(policy, look)


def room(policy: Policy, look: Look, training: bool) -> int:
    """Recent rows a bulk writer may pile up: the hold's bound once while a training runs
    (each row written then is held twice, in the segment and as float32 in the build's log:
    4 KB at 512-d, 10 KB at 1280-d), else twice."""
    limit = held_limit(policy, look)
    return limit if training else 2 * limit


def needs_training(policy: Policy, look: Look) -> bool:
    meta, target = look.seg.base.meta, look.target
    if not policy.needs_training(meta.kind, meta.trained_count, target, look.dim, meta.factory):
        return False
    if not look.holds or look.recent > held_limit(policy, look):
        return True
    # A bulk import is under way: train once, for the size it will reach, when the sample is
    # in (earlier only if the recent segment outgrew the hold's bound: memory first).
    return look.planned > 0 and look.count >= policy.train_at(target, look.dim)


def needs_compaction(policy: Policy, seg: Segments) -> bool:
    # An exact recent segment on a base with a template was replayed at start-up: it is folded
    # in (the segments that follow are coded) once it holds `settle_min` rows; a few replayed
    # rows are not worth rewriting the whole base (1.3 GB at 10M) at each start.
    replayed = seg.base.template is not None and not seg.coded
    limit = policy.settle_min if replayed else policy.delta_limit(len(seg.base))
    tombstones = policy.tombstone_fraction * max(1, len(seg.base))
    return int(seg.recent.ntotal) > limit or (seg.dead > 0 and seg.dead >= tombstones)


def unsaved(policy: Policy, seg: Segments) -> bool:
    """Whether the next start would replay enough from SQLite to be worth a new base."""
    return int(seg.recent.ntotal) + seg.dead >= policy.settle_min


def needs_fine(seg: Segments) -> bool:
    """A quantized base without fine codes (an earlier version's, or its file lost)."""
    base = seg.base
    return base.meta.kind in QUANTIZED and base.fine is None and len(base) > 0


def needs_full_tuning(seg: Segments, look: Look) -> bool:
    """A base tuned provisionally during a bulk import, none running now (compaction tunes
    one again as it folds; this is for an import whose end left nothing to fold)."""
    return seg.base.meta.provisional and not look.holds and len(seg.base) > 0


def needs_retarget(policy: Policy, seg: Segments) -> bool:
    """A tuned base whose nprobe and rescore were chosen for another recall target than the
    policy's (the daemon restarted with another --recall), or with another margin above it
    (a base tuned by an earlier version, whose margin was larger: its searches were slower)."""
    meta = seg.base.meta
    tuned = meta.kind != "exact" and meta.nprobe > 0 and len(seg.base) > 0
    target = policy.target_recall
    other_aim = abs(meta.aim - tuning_goal(target)) > 1e-9
    return tuned and (abs(meta.tuned_for - target) > 1e-9 or other_aim)


def job(policy: Policy, look: Look, building: bool, settle: bool) -> str | None:
    """The background job owed now, first what matters most: "train" (the first base, or one
    of another kind or size; while an import holds the index, once, for its final size);
    "held" (an import holds it: nothing else); "fine" (a base without fine codes);
    "retarget" (tuned for another recall target); "compact" (deletions or recent rows past
    their bounds, or after an import ended, `settle`, any rows not in a saved base); "tune"
    (a provisional tuning, once nothing is left to fold); None: nothing."""
    seg = look.seg
    if building or needs_training(policy, look):
        return "train"
    if held(policy, look):
        return "held"
    # A base mostly removed is folded first: fine codes or a tuning are made from the rows
    # that are left (from a base of removed rows only, they had nothing to work on).
    if (
        seg.dead
        and needs_compaction(policy, seg)
        and (needs_fine(seg) or needs_retarget(policy, seg))
    ):
        return "compact"
    if needs_fine(seg):
        return "fine"
    if needs_retarget(policy, seg):
        return "retarget"
    if needs_compaction(policy, seg) or (settle and unsaved(policy, seg)):
        return "compact"  # (its base is tuned again where its tuning was provisional)
    return "tune" if needs_full_tuning(seg, look) else None
