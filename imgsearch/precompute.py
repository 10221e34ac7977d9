"""Background feature precompute: stored images' verification features computed after each
add, so the first `compare=verify` search after an add finds them cached (warm). It waits
while an add runs and then takes only CPU that nothing else wants."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .catalog import Catalog, Change
from .comparators import Comparator, ComparatorRegistry, FeatureCache, FeatureError
from .cpu import lowest_priority, normal_class
from .errors import ImgSearchError

log = logging.getLogger(__name__)

# Comparators whose stored-image features are worth computing ahead: SIFT-based ones cost
# ~170 ms per image on first use; the others are a few ms and stay lazy.
PRECOMPUTED = ("verify",)
# The background thread runs only on CPU that nothing else wants: Linux's SCHED_IDLE class
# (niceness 10 gave it ~5% of a machine busy with an /add of 12 MP photos, ~15% more CPU per
# added image: docs/BENCHMARKS.md). Where that class is missing, it is niced instead
# (cpu.lowest_priority).
# While an add runs, the thread waits (looking every PAUSE_POLL seconds): on 12 MP photos its
# SIFT took ~15% of the CPU an add needs, even at the lowest priority; it catches up after.
PAUSE_POLL = 0.1
CLOSE_WAIT_S = 2.0  # for the image in progress at a stop (SIFT of a 12 MP photo: ~0.2 s)
_STOP = -1


class FeaturePrecompute:
    """One background thread that computes features of newly written images.

    `mode`: "on", "off", or "auto" (on while the library holds fewer than `limit` images).
    It listens to the catalog's committed writes; whether a queued image is worth doing (the
    library's size, for `auto`) is decided on the background thread.
    """

    def __init__(
        self,
        catalog: Catalog,
        features: FeatureCache,
        comparators: ComparatorRegistry,
        *,
        mode: str,
        limit: int,
        max_file_bytes: int,
        max_pixels: int,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        """`paused`: whether to wait now (an add is running); asked before each image."""
        self.catalog = catalog
        self.features = features
        self.comparators: list[Comparator] = [
            comparators.get(name) for name in PRECOMPUTED if name in comparators
        ]
        self.mode = mode
        self.limit = limit
        self._limits = {"max_file_bytes": max_file_bytes, "max_pixels": max_pixels}
        self._queue: queue.Queue[int] = queue.Queue()
        self._paused = paused
        self._closing = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self.priority = "normal"  # what the thread got: "idle", "nice 19" (set when it starts)
        self.done = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="precompute", daemon=True)
        if mode != "off" and self.comparators:
            self._thread.start()
            catalog.subscribe(self.on_change)

    @property
    def enabled(self) -> bool:
        """Whether new writes get their features now."""
        if self.mode == "off" or not self.comparators:
            return False
        return self.mode == "on" or self.catalog.store.count() < self.limit

    def on_change(self, change: Change) -> None:
        """Catalog listener: queue the written images (runs on the writing thread: no I/O)."""
        ids = change.written
        # `enabled` once a write, not once an image (an import writes 20,000 a batch)
        if not ids or not self._thread.is_alive() or not self.enabled:
            return
        with self._idle:
            self._busy += len(ids)
        for image_id in ids:
            self._queue.put(int(image_id))

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued image is done; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "enabled": self.enabled,
            "limit": self.limit,
            "pending": self._busy,
            "priority": self.priority,
            "done": self.done,
            "failed": self.failed,
        }

    def close(self) -> None:
        """Stop the thread: images still queued are left undone (their features are made when
        a search first needs them); the one in progress is given normal priority (where the
        process may raise it: root, or RLIMIT_NICE) and CLOSE_WAIT_S to finish, then left to
        end on its own (a daemon thread; its cache write is atomic), so that a busy machine
        never keeps SIGTERM waiting."""
        self._closing.set()
        if self._thread.is_alive():
            if self._thread.native_id is not None:
                normal_class(self._thread.native_id)
            self._queue.put(_STOP)
            self._thread.join(CLOSE_WAIT_S)
            if self._thread.is_alive():
                log.info("precompute: the image in progress is left to finish on its own")

    def _run(self) -> None:
        self.priority = lowest_priority()
        while (image_id := self._queue.get()) != _STOP:
            try:
                while self._paused() and not self._closing.wait(PAUSE_POLL):
                    pass
                if not self._closing.is_set():
                    self._compute(image_id)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _compute(self, image_id: int) -> None:
        if not self.enabled:  # auto, and the library has grown past the limit
            return
        located = self.catalog.store.paths([image_id]).get(image_id)
        if located is None:  # removed meanwhile
            return
        try:
            path = Path(located.path)
            made = self.features.of_file(self.comparators, image_id, path, **self._limits)
            if any(isinstance(f, FeatureError) for f in made):
                self.failed += 1  # (logged where it failed)
                return
            self.done += 1
        except ImgSearchError as exc:
            self.failed += 1
            log.info("no features for %s: %s", located.path, exc.message)
        except Exception:  # one bad file never stops the thread
            self.failed += 1
            log.exception("precomputing features of %s failed", located.path)
