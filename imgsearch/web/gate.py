"""Back-pressure: heavy requests beyond a limit get 503 + Retry-After instead of piling up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import Busy


class Gate:
    """Counts requests of one kind in progress; only touched on the event loop, so no lock."""

    def __init__(self, kind: str, limit: int, retry_after: int) -> None:
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after
        self.active = 0

    @contextmanager
    def enter(self) -> Iterator[None]:
        if self.active >= self.limit:
            raise Busy(
                f"too many {self.kind} requests in progress ({self.active}); retry shortly",
                self.retry_after,
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
