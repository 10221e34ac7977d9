"""index.due: the background work an index owes, read off real segments of a small library."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from imgsearch.catalog import Catalog
from imgsearch.index import Policy, due
from imgsearch.index import policy as P
from imgsearch.store import FileFacts, NewImage

from .helpers import CONE_DIM as DIM
from .helpers import cone


def filled(tmp_path: Path, policy: Policy, n: int) -> Catalog:
    x = cone(n, 30, seed=3)
    catalog = Catalog(tmp_path, "m", DIM, policy)
    catalog.index.close()  # the worker: this thread runs maintain() at known points
    catalog.index._stop.clear()
    catalog.put(
        [NewImage(FileFacts(f"/d/{i}.jpg", 1, 1, f"h{i}", 1, 1), v) for i, v in enumerate(x)]
    )
    return catalog


def test_an_import_trains_once_its_sample_is_in_and_holds_compaction(tmp_path: Path) -> None:
    policy = Policy(exact_max=100, delta_max=50, delta_fraction=0, held_delta_max=10_000)
    catalog = filled(tmp_path, policy, 300)
    try:
        seg = catalog.index._segments
        alone = due.Look(seg, DIM, 300, holds=0, planned=0)
        assert due.needs_training(policy, alone)  # 300 > exact_max: due now
        assert due.needs_compaction(policy, seg) and not due.held(policy, alone)
        sample = policy.train_at(1_000_000, DIM)
        assert sample > 300
        early = dataclasses.replace(alone, holds=1, planned=1_000_000)
        assert early.target == 1_000_000
        assert not due.needs_training(policy, early)  # an import of 1M: wait for the sample
        assert due.held(policy, early)  # and no compaction while it runs
        ready = dataclasses.replace(early, count=sample)
        assert due.needs_training(policy, ready)
        # A writer may pile up twice the hold's bound, once while a training holds rows twice.
        limit = due.held_limit(policy, early)
        assert due.room(policy, early, training=True) == limit
        assert due.room(policy, early, training=False) == 2 * limit
    finally:
        catalog.close()


def test_a_tuned_base_is_retargeted_for_another_recall(tmp_path: Path) -> None:
    policy = Policy(exact_max=100, delta_max=1 << 40)
    catalog = filled(tmp_path, policy, 1500)
    try:
        assert catalog.index.maintain() == "train"
        seg = catalog.index._segments
        assert seg.base.meta.nprobe > 0 and not due.needs_fine(seg)
        assert not due.needs_retarget(policy, seg)
        assert due.needs_retarget(dataclasses.replace(policy, target_recall=0.99), seg)
        assert not due.needs_compaction(policy, seg) and not due.unsaved(policy, seg)
        # The same target with another margin above it (a base of an earlier version, tuned
        # slower for a larger one; or none recorded): tuned again, once.
        meta = seg.base.meta
        assert meta.aim == P.tuning_goal(policy.target_recall) > meta.target
        for aim in (meta.aim + 0.01, 0.0):
            seg.base = dataclasses.replace(seg.base, meta=dataclasses.replace(meta, aim=aim))
            assert due.needs_retarget(policy, seg)
        assert catalog.index.maintain() == "tune"
        assert catalog.index._segments.base.meta.aim == meta.aim
        assert not due.needs_retarget(policy, catalog.index._segments)
        assert catalog.index.maintain() is None
    finally:
        catalog.close()
