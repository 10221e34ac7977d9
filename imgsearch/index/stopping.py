"""Background index work (a build, its training, a tuning) abandoned when the daemon stops."""

from __future__ import annotations

import threading


class Stopped(Exception):
    """The work was abandoned (the daemon is stopping): SQLite has everything."""


def check(stop: threading.Event | None) -> None:
    """Raise Stopped once `stop` is set."""
    if stop is not None and stop.is_set():
        raise Stopped
