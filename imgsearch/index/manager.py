"""The library's index: segments searched now, training and compaction in the background.

Requests take one lock only, briefly, for the small recent segment. Training and compaction
build a new base off that lock, save it once (its own folder, atomically), reopen it
memory-mapped and swap it in with one reference assignment, after replaying the changes that
arrived meanwhile (an in-memory log stamped with database generations). Nothing is ever saved
on the request path: SQLite is the change log, and start-up replays rows newer than the base.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DiskFull
from ..memory import trim
from . import base as B
from . import due
from .about import about
from .build import Source, build, fold, retune, with_fine
from .codes import Encoded, Precoded, copied, relabel
from .hits import exact_among
from .ledger import Ledger
from .placing import Placers
from .policy import HELD_TUNE_QUERIES, TUNE_QUERIES, Policy
from .reads import Searcher, scan_store, searching_threads
from .segments import Segments, bits
from .startup import first_base, reopen, saved_base, warm_up
from .swaps import fine_of, published
from .worker import Worker

log = logging.getLogger(__name__)

STOP_WAIT = 5.0  # seconds close() waits for a build in progress (the thread is a daemon)
ROOM_POLL = 0.2  # seconds between looks while a bulk writer waits for the index (make_room)


class LibraryIndex:
    """Vectors keyed by store ids; search with an optional allow-list; thread-safe."""

    def __init__(
        self, folder: Path, source: Source, model_id: str, dim: int, policy: Policy
    ) -> None:
        self.folder, self.source, self.model_id, self.dim = folder, source, model_id, dim
        self.policy = policy
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = threading.Lock()  # one build at a time (never taken by requests)
        self.state = "idle"
        self.origin = "new"
        self._holds = 0  # bulk imports in progress: training and compaction wait for them
        self._planned = 0  # the library size the imports in progress will reach (hold)
        self._settle = False  # an import ended: fold its rows into a saved base now
        self._building = False  # the first base is being built: searches read the store
        self._path: Path | None = None
        self._behind: int | None = None  # a start-up's replay short of disk space: from here
        self._reads = Searcher(source)
        # The placer of adds to copies of a template, where the policy chooses lists itself.
        self._placer = Placers(policy.places, policy.train_bf16, policy.tree_from)
        self._segments = self._open()
        # Everything up to the store's generation is in the segments now (replayed): what a
        # compaction saves as its base's generation, so the next start replays none of it.
        self._ledger = Ledger(
            max(self._segments.base.meta.generation, self.source.generation()), self._behind
        )
        # Brings the index up to SQLite after a lost write (the catalog's catch_up: it takes
        # the catalog's write lock); the worker calls it before its other work.
        self.catch_up: Callable[[], None] | None = None
        self._worker = Worker(self.maintain, self._trim, self._stop)

    # -- start-up ---------------------------------------------------------------------------

    def _open(self) -> Segments:
        started = time.monotonic()
        found = saved_base(self.folder, self.source, self.model_id, self.dim, self.policy)
        if found is not None:
            base, self._path, self.origin = found[0], found[1], "loaded"
        else:
            base, self._path, self.origin = first_base(
                self.folder, self.source, self.model_id, self.dim, self.policy, self._built
            )
            if self.origin == "building":
                self._building = True
                self.state = "building"
        place = functools.partial(self._placer, base.template)
        segments, changed, self._behind = reopen(
            base, self.source, self.policy, self._lock, started, place
        )
        if changed and self.origin == "loaded":
            self.origin = "replayed"
        return segments

    def _build(self, count: int) -> B.Base:
        return self._keep(self._built(count))

    def _built(self, count: int) -> B.Base:
        """A new base for `count` vectors, trained and tuned, not saved yet."""
        spec = self.policy.spec(count, self.dim)
        # During a bulk import a provisional tuning (fewer queries): the import waits for it,
        # and its end tunes again for the size it reached.
        queries = HELD_TUNE_QUERIES if self._holds else TUNE_QUERIES
        built = build(
            spec, self.source, self.model_id, self.dim, self.policy, self._stop, self.folder,
            queries,
        )  # fmt: skip
        if count > built.meta.trained_count:  # trained ahead, for an import's final size
            built = replace(built, meta=replace(built.meta, trained_count=count))
        return built

    def warm(self) -> threading.Thread | None:
        """Read the saved base's fine codes in, make the placer for adds (startup.warm_up)."""
        placer = self._placer if self.policy.places else None
        return warm_up(self._segments, placer, self.origin, self._stop)

    # -- changes (the catalog calls these in generation order) -------------------------------

    def encode(self, vectors: np.ndarray) -> Precoded | None:
        """What add() would encode of `vectors`, done ahead (Segments.precode); None while the
        recent segment holds vectors, not codes."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        return self._segments.precode(vectors)

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, generation: int, ahead: Precoded | None = None
    ) -> None:
        """Add (or replace) vectors under `ids`; `ahead`: encode() of these vectors, in order."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        seg = self._segments
        if ahead is not None and ahead.template is seg.base.template and ahead.count == len(ids):
            relabel(ahead.codes, ids)
            codes: Encoded | None = ahead.codes
        else:
            codes = seg.encode(ids, vectors)  # off the lock: searches of the recent one go on
        fine = seg.base.fine  # its codes written before the rows are searchable, off the lock
        if fine is not None:
            made = ahead is not None and ahead.fine is fine and ahead.count == len(ids)
            fine.put(ids, vectors, ahead.fine_codes if made and ahead is not None else None)
        # A compaction running: its swap replays these rows into segments of the same
        # template, so the log keeps a copy of their codes (not their vectors: nothing is
        # encoded twice, and a copy is smaller than the float32 vectors).
        kept = None
        if codes is not None and self._ledger.folding:
            kept = copied(codes)
        with self._lock:
            # A swap meanwhile: the codes still fit a segment of the same template (a
            # compaction's); else they are encoded again for the new segments.
            now = self._segments
            fits = now.coded and now.base.template is seg.base.template
            now.add(ids, vectors, codes if fits else None, fine_done=now.base.fine is fine)
            logged = kept if fits and kept is not None and self._ledger.folding else vectors
            self._ledger.note(generation, "add", ids, logged)
        self._poke()

    def remove(self, ids: np.ndarray, generation: int) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            self._segments.remove(ids)
            self._ledger.note(generation, "remove", ids, None)
        self._poke()

    def applied(self, generation: int, repaired: bool = False) -> None:
        """The catalog's write of `generation` is all in (its removals and every chunk of its
        adds): a compaction may now save a base that claims it; `repaired`: every write up to
        it, a lost one too (the catalog applied them again from SQLite)."""
        with self._lock:
            self._ledger.done(generation, repaired)

    def lost(self, generation: int) -> None:
        """The catalog's write of `generation` reached SQLite, not (all of) the index: no base
        saved claims it until the catalog has applied it again (applied(repaired=True))."""
        with self._lock:
            self._ledger.lose(generation)
        self._worker.wake()

    def lost_since(self) -> int | None:
        """The oldest write the index may lack (lost), or None."""
        return self._ledger.lost

    def _poke(self) -> None:
        seg = self._segments
        if int(seg.recent.ntotal) > self.policy.delta_limit(len(seg.base)):
            self._worker.wake()
        elif due.needs_training(self.policy, self._look()):
            self._worker.wake()

    @contextmanager
    def hold(self, expected: int = 0) -> Iterator[None]:
        """Defer compaction while a bulk write of about `expected` new rows runs (unless the
        recent segment outgrows `policy.held_limit`). Training, if the final size needs
        it, runs once, for that size, as soon as the library holds its sample
        (`policy.train_at`); when the last hold ends the worker folds every recent row into
        a saved base, so a restart replays nothing."""
        start = len(self)
        if self._worker.error is not None:  # (space may have been freed since)
            self._worker.retry_now()
        with self._lock:
            self._holds += 1
            if expected > 0:
                self._planned = max(self._planned, start + expected)
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                if not self._holds:
                    self._planned, self._settle = 0, True
            self._worker.wake()

    def make_room(self, stop: threading.Event) -> None:
        """A bulk writer calls this between batches: while the recent segment holds over twice
        `policy.held_limit` (over once while a training runs), it waits for the worker to fold
        it in (memory stays bounded; an import goes at the index's pace), or until `stop` (or
        close()) is set; DiskFull where the worker cannot save a base for want of room."""
        while (look := self._look()).recent > self._room(look):
            if stop.is_set() or self._stop.is_set():
                return
            if (full := self._worker.full) is not None:
                raise DiskFull(full.message)
            self._worker.wake()
            stop.wait(ROOM_POLL)

    def _room(self, look: due.Look) -> int:
        training = self._ledger.log is not None and not self._ledger.folding
        return due.room(self.policy, look, training)

    def _look(self) -> due.Look:
        return due.Look(self._segments, self.dim, len(self), self._holds, self._planned)

    # -- reads ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.source.count() if self._building else len(self._segments)

    def ids(self) -> np.ndarray:
        """The ids searches find (the store's while the first base is built)."""
        return self.source.ids() if self._building else self._segments.ids()

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids, best first, -1 padded; only `allowed` ids (sorted) if given."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with searching_threads():
            if allowed is not None:
                allowed = np.ascontiguousarray(allowed, dtype=np.int64)
                if len(allowed) <= self.policy.allowed_exact_max:
                    return exact_among(queries, k, *self.source.vectors(allowed.tolist()))
            if self._building:
                return scan_store(self.source, queries, k, allowed, self.policy.store_scan_max)
            # One read of the segments: a swap meanwhile does not mix two states.
            return self._reads.search(self._segments, queries, k, allowed, self._idle())

    def _idle(self) -> bool:
        """No training, compaction or bulk import is using the CPU."""
        return not self._busy.locked() and not self._holds

    def slow_reads(self) -> bool:
        """Whether searches' re-scoring reads come slowly from the disk (reads.Searcher)."""
        return self._reads.slow_disk()

    def describe(self) -> dict[str, Any]:
        """The index as `/stats` shows it (about.py)."""
        seg = self._segments
        timings, error = self._reads.timings(), self._worker.error
        return about(seg, len(self), self._planned, self.origin, self.state, timings, error)

    # -- background work ------------------------------------------------------------------------

    def _trim(self, ran: str) -> None:
        """Freed memory back to the system after a job (not while an import runs: a trim
        stalls other threads' allocations for as long as it takes, 0.1-0.4 s after a
        compaction at 10M; the import's end brings a job that trims)."""
        if not self._holds:
            trim(f"index {ran}")

    def maintain(self) -> str | None:
        """Train or compact if due (the worker calls this; tests may too); return what ran."""
        if self._ledger.lost is not None and self.catch_up is not None:
            self.catch_up()  # (a lost write: the index brought up to SQLite first)
        with self._busy:
            if self._stop.is_set():
                return None
            job = due.job(self.policy, self._look(), self._building, self._settle)
            if job in ("compact", "tune", None):  # an import's end was looked at (due.job)
                self._settle = False
            jobs = {"train": self.train, "fine": self.add_fine, "compact": self.compact}
            make = self.retarget if job in ("retarget", "tune") else jobs.get(job or "")
            if make is None:
                return None
            self._replace(make)
            return "tune" if job == "retarget" else job

    def rebase(self) -> None:
        """Fold recent changes into a new saved base now: a training where one is due (as the
        worker would run it, whether or not it has woken yet), else a compaction."""
        with self._busy:
            due_now = self._building or due.needs_training(self.policy, self._look())
            self._replace(self.train if due_now else self.compact)

    def _replace(self, make: Any) -> None:
        with self._lock:
            self._ledger.begin(folding=make == self.compact)  # (its base keeps the template)
        try:
            try:
                base = make()
                if make in (self.retarget, self.add_fine):  # the same codes: carried over
                    self._carry(base)
                else:
                    self._swap(base)
            except BaseException:  # its new fine codes' file, if any, is of no use now
                for orphan in B.orphans(self.folder, {self._segments.base.meta.fine or ""}):
                    orphan.unlink(missing_ok=True)
                raise
            finally:
                with self._lock:
                    self._ledger.end()
            if self._path is not None:
                B.prune(self.folder, self._path)
                # The one saved base holds every deletion up to its generation: older log
                # rows are no use to any start-up now.
                self.source.forget_deletions(self._segments.base.meta.generation)
        finally:
            # Idle only once the old base is gone from disk (a failed first build retries).
            self.state = "building" if self._building else "idle"

    def train(self) -> B.Base:
        """A new base trained on the library as it is now."""
        self.state = "building" if self._building else "training"
        return self._build(self._look().target)

    def add_fine(self) -> B.Base:
        """The current base with fine codes written for every vector, tuned again."""
        self.state = "tuning"
        base = with_fine(self._segments.base, self.source, self.folder, self._stop)
        return self._keep(retune(base, self.source, self.policy, self._stop))

    def retarget(self) -> B.Base:
        """The current base tuned again for the policy's recall target (the codes unchanged)."""
        self.state = "tuning"
        return self._keep(retune(self._segments.base, self.source, self.policy, self._stop))

    def compact(self) -> B.Base:
        """The current base with deletions dropped and recent vectors folded in (a coded
        recent segment's codes are moved in as they are: nothing is re-encoded)."""
        self.state = "compacting"
        with self._lock:  # copies only: the recent segment's codes (or vectors), two bitmaps
            seg = self._segments
            dead, recent, frozen = seg.bitmap.copy(), seg.members.copy(), seg.frozen()
            generation = self._ledger.claimable()
        saved = self._path / B.INDEX if self._path else None
        placer = seg.placer or self._placer(seg.base.template)  # (a start's comes later)
        base = fold(seg.base, saved, bits(dead), bits(recent), frozen, generation, placer)
        meta = base.meta
        if self.policy.needs_retune(
            meta.kind, meta.tuned_count, len(base), self._holds, meta.provisional
        ):
            self.state = "tuning"
            base = retune(base, self.source, self.policy, self._stop)
        return self._keep(base)

    def _keep(self, base: B.Base) -> B.Base:
        """Save a new base; return what searches will read (base.kept)."""
        base, self._path = B.kept(base, self.folder, self.model_id, self.dim, False, self._path)
        return base

    def _swap(self, base: B.Base) -> None:
        """Publish `base` with the changes logged since its generation replayed on top (off
        the lock while the new segments are not visible yet: swaps.published)."""
        fresh = Segments(base, self._lock, placer=self._placer(base.template))

        def publish() -> None:
            self._segments = fresh  # the swap: one reference assignment
            if self._building:  # the first base: searches use it from now on
                self._building, self.origin = False, "rebuilt"

        replay = functools.partial(fresh.replay, after=base.meta.generation)
        published(self._lock, self._ledger.since, replay, publish)
        log.info("index swapped in: %s, %d vectors", base.meta.factory, len(fresh))

    def _carry(self, base: B.Base) -> None:
        """Publish `base`, the current base's codes tuned again or with new fine codes, over
        the current segments' deletions and recent rows (Segments.carried), the new fine
        codes of the rows written during the job (logged) written first."""
        fine = base.fine if base.fine is not self._segments.base.fine else None
        placer = self._placer(base.template)

        def publish() -> None:
            self._segments = self._segments.carried(base, placer)

        published(self._lock, self._ledger.since, fine_of(fine), publish)
        log.info("index %s swapped in over its recent rows", base.meta.factory)

    def close(self) -> None:
        """Stop background work (a build in progress is abandoned: SQLite has everything)."""
        self._stop.set()
        self._worker.join(STOP_WAIT)
        self._reads.close()


__all__ = ["LibraryIndex"]
