"""Start-up: the saved base to open, and the segments over it brought up to the store.

SQLite is the change log. A start opens the newest usable saved base, takes out what was
deleted since its generation (from the store's deletions log) and replays the rows written
since, so kill -9 at any point loses nothing the store had.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..cpu import lower_priority
from ..errors import disk_full
from ..files import fsync
from . import base as B
from .build import Source
from .placing import Placer
from .policy import Policy
from .segments import Segments

log = logging.getLogger(__name__)


def rename_model(folder: Path, old: str, new: str) -> int:
    """Make the saved bases of model id `old` those of `new` (the same weights under a new
    id: a data dir rebound by the catalog), so a start loads them instead of training again;
    returns how many. Each meta.json is replaced in one rename."""
    renamed = 0
    for path in B.saved(folder):
        meta = path / B.META
        try:
            raw = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue  # an unreadable one is discarded when loaded
        if not isinstance(raw, dict) or raw.get("model_id") != old:
            continue
        tmp = meta.with_name(B.META + B.TEMP_SUFFIX)
        tmp.write_text(json.dumps({**raw, "model_id": new}, indent=1))
        fsync(tmp)
        os.replace(tmp, meta)
        fsync(path)
        renamed += 1
    return renamed


def saved_base(
    folder: Path, source: Source, model_id: str, dim: int, policy: Policy
) -> tuple[B.Base, Path] | None:
    """The newest saved base this library can use, and its folder (None: none can be used).
    Those that cannot be used (damaged, newer than the database) are deleted, and so are
    fine-code files no saved base names (a training a crash stopped left its)."""
    for orphan in B.orphans(folder, set()):
        log.warning("removing %s: no saved index uses it (a training that did not end)", orphan)
        orphan.unlink(missing_ok=True)
    current = source.generation()
    for path in B.saved(folder):
        try:
            base = B.load(path, model_id, dim)
        except B.IndexFileError as exc:  # (damaged: a new base is built and saved)
            log.warning("saved index unusable, deleted: %s", exc)
            B.discard(path)
            continue
        if base.meta.generation > current:
            # The database is older than the index (restored from a backup): the base's ids
            # may name other images by the time the database reaches its generation.
            log.warning("saved index %s is newer than the database: deleted", path)
            del base
            B.discard(path)
            continue
        if policy.mode == "exact" and base.meta.kind != "exact":
            log.info("--index exact: not using the saved %s index", base.meta.kind)
            continue
        return base, path
    return None


def first_base(
    folder: Path, source: Source, model_id: str, dim: int, policy: Policy,
    built: Callable[[int], B.Base],
) -> tuple[B.Base, Path | None, str]:  # fmt: skip
    """The base a start without a usable saved one begins with, its folder, and how it came:
    "building" (an empty exact base while the worker trains the first IVF one, which takes
    minutes at a million images: searches read the store meanwhile), "rebuilt" (an exact base
    `built` and saved now), "new" (an empty library)."""
    present = source.count()
    if present and policy.spec(present, dim).kind != "exact":
        log.info(
            "no usable saved index: building one from SQLite (%d vectors) in the background; "
            "searches are exact from SQLite until it is ready",
            present,
        )
        return B.empty_exact(model_id, dim, source.generation()), None, "building"
    if not present:
        return B.empty_exact(model_id, dim, source.generation()), None, "new"
    log.info("no usable saved index: building one from SQLite (%d vectors)", present)
    base, path = B.kept(built(present), folder, model_id, dim, True)
    return base, path, "rebuilt"


def reopen(
    base: B.Base, source: Source, policy: Policy, lock: threading.Lock, started: float,
    place: Callable[[], Placer | None] = lambda: None,
) -> tuple[Segments, bool, int | None]:  # fmt: skip
    """Segments over `base` holding what the store holds now, whether anything was taken
    out or replayed (`started`: when the start began, for the log), and the generation from
    which the replay could not write the rows' fine codes for want of disk space (None: it
    could): those rows wait until there is room (LibraryIndex.lost), the daemon starts
    without them. `place` makes the placer for the base's template (Segments says) where the
    replay encodes; else the segments come without one (LibraryIndex.warm makes it once the
    daemon answers)."""
    # Exact at first: replaying is then a copy, not an encoding (~30 us a vector at 1M); the
    # worker folds these rows into the base soon after (index.due.needs_compaction).
    segments = Segments(base, lock, coded=False)
    opened = time.monotonic()
    dead = gone(base, source)
    segments.remove(dead)
    found = time.monotonic()
    # Many rows newer than the base (a crash mid-import: up to held_growth times the base) are
    # replayed as codes: encoding is slower than a copy, but an exact segment of millions of
    # rows would not fit in memory (2 KB a row at 512-d).
    if source.count() - len(segments) > policy.held_limit():
        segments.placer = place()
        segments.code_if_empty()
    replayed, behind = 0, None
    try:
        for ids, vectors in source.chunks(since_generation=base.meta.generation):
            segments.add(ids, vectors)
            replayed += len(ids)
    except OSError as exc:
        if (full := disk_full(exc)) is None:
            raise
        log.warning(
            "index: the rows written since generation %d wait: %s", base.meta.generation, full
        )
        behind = base.meta.generation + 1
    segments.code_if_empty()  # nothing replayed: coded from the start
    log.info(
        "index %s: %d vectors in %.1fs (base opened %.1fs, %d deleted found %.1fs, "
        "%d changed replayed from SQLite %.1fs)",
        base.meta.kind, len(segments), time.monotonic() - started, opened - started,
        len(dead), found - opened, replayed, time.monotonic() - found,
    )  # fmt: skip
    return segments, bool(replayed or len(dead)), behind


def warm_up(
    seg: Segments, placer: Callable[[Any], Placer | None] | None, origin: str,
    stop: threading.Event,
) -> threading.Thread | None:  # fmt: skip
    """What a start leaves to do once the daemon answers (during the start the reads slowed
    /health by 2-4 s): a saved base's fine codes read into memory on a background thread
    (returned; None: nothing to read), and the placer for adds made on another (place_later,
    where `placer` makes it: the policy chooses lists itself)."""
    if placer is not None and seg.placer is None and seg.base.template is not None:
        place_later(seg, placer)
    if origin not in ("loaded", "replayed"):
        return None
    return warm_fine(seg.base, stop)


def warm_fine(base: B.Base, stop: threading.Event) -> threading.Thread | None:
    """Fault a saved base's fine codes into memory on a thread of their own at the background
    priority (fine.FineTable.warm), so the first searches after a start do not each wait for
    their candidates' rows from the disk; searches meanwhile fault in what they touch. Only
    the rows up to the base's last id: the file's grown tail is holes, which would be faulted
    in as zeros (0.8 GB at 10M)."""
    if base.fine is None or not len(base.ids):
        return None
    table, rows = base.fine.table, int(base.ids.max()) + 1

    def run() -> None:
        lower_priority()
        started = time.monotonic()
        try:
            done = table.warm(stop, rows)
        except OSError as exc:  # (the file pruned by a new training meanwhile: nothing to read)
            log.warning("fine codes not read in: %s", exc)
            return
        log.info("fine codes read in: %.0f MB in %.1fs", done / 1e6, time.monotonic() - started)

    thread = threading.Thread(target=run, name="fine-warm", daemon=True)
    thread.start()
    return thread


def place_later(seg: Segments, make: Callable[[Any], Placer | None]) -> threading.Thread:
    """Make the placer for `seg`'s template (`make`) on a thread of its own at the background
    priority and give it to `seg` (segments swapped in meanwhile come with their own). A start
    does not wait for it: its tree of the centres took 0.6 s at 16,384 lists, spent beside the
    model's load (start to /health 0.6 s sooner at 9M, bench/startup.py); adds meanwhile are
    placed by FAISS."""

    def run() -> None:
        lower_priority()
        try:
            placer = make(seg.base.template)
        except Exception:  # (adds go on through FAISS)
            log.exception("no placer for the index's adds")
            return
        if seg.placer is None:
            seg.placer = placer

    thread = threading.Thread(target=run, name="index-place", daemon=True)
    thread.start()
    return thread


def gone(base: B.Base, source: Source) -> np.ndarray:
    """Ids of the base no longer present: from the store's deletions log where it reaches back
    to the base's generation, else by reading every present id (older databases)."""
    if not len(base.ids):
        return np.zeros(0, np.int64)
    deleted = source.deleted_since(base.meta.generation)
    if deleted is not None:
        dead: np.ndarray = deleted[base.contains(deleted)]
        return dead
    return np.setdiff1d(base.ids, source.ids(), assume_unique=True)
