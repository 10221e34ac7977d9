"""Model calls side by side: ingest batches use every core while no search is waiting."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Lanes:
    """How many model calls may run at once (the cores over the torch threads per call).

    A bulk call (an ingest batch) always gets one lane, and more only while no interactive
    call (a search's embedding) is running or waiting, so an add on an idle machine keeps
    every core busy and a search arriving mid-add never waits for a lane: it only shares the
    cores with the one batch that is always allowed (plus those already running, which end
    within one batch).
    """

    def __init__(self, lanes: int = 1) -> None:
        self.lanes = max(1, lanes)
        self._bulk = 0
        self._interactive = 0
        self._cond = threading.Condition()

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Around a search's model call: never waits; holds further bulk calls back."""
        with self._cond:
            self._interactive += 1
        try:
            yield
        finally:
            with self._cond:
                self._interactive -= 1
                self._cond.notify_all()

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Around an ingest batch's model call: waits for a free lane (one is always free)."""
        with self._cond:
            self._cond.wait_for(self._bulk_may_start)
            self._bulk += 1
        try:
            yield
        finally:
            with self._cond:
                self._bulk -= 1
                self._cond.notify_all()

    def _bulk_may_start(self) -> bool:
        return self._bulk == 0 or self._bulk + self._interactive < self.lanes


def lane_count(device: str, threads: int, cpus: int | None = None) -> int:
    """Model calls side by side: on CPU the cores over the threads per call; on a GPU one
    (the device runs one batch at a time; more would only queue host copies)."""
    if device.startswith("cuda"):
        return 1
    return max(1, (cpus or os.cpu_count() or 1) // max(1, threads))


def lanes_of(embedder: Any) -> Lanes:
    """The embedder's lanes (one, for an embedder that has none)."""
    lanes = getattr(embedder, "lanes", None)
    return lanes if isinstance(lanes, Lanes) else Lanes(1)
