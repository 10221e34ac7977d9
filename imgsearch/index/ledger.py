"""Which database generations the index holds: what a compaction's base may claim (a start-up
replays only rows newer than its base's generation), and the log of changes a background job
replays over its result when it swaps it in. The index's lock guards every call."""

from __future__ import annotations

import numpy as np

from .codes import Encoded
from .segments import Change


class Ledger:
    """The index's generations: `applied`, every write up to it in the segments; `lost`, the
    oldest write SQLite took and the index may lack; `log`, the changes since a job began."""

    def __init__(self, applied: int, lost: int | None = None) -> None:
        self.applied = applied
        self.lost = lost
        self.log: list[Change] | None = None  # a job is running: it replays these when it swaps
        self.folding = False  # the job is a compaction (the log may keep codes)

    def note(
        self, generation: int, op: str, ids: np.ndarray, data: np.ndarray | Encoded | None
    ) -> None:
        """A change of the write of `generation` is in the segments. A write may come in
        several calls of one generation (a removal, then its adds in chunks): until done()
        says it is whole, a base folded now holds the ones before it (the swap and a start-up
        replay this generation whole again, which is harmless)."""
        self.applied = max(self.applied, generation - 1)
        if self.log is not None:
            self.log.append((generation, op, ids, data))

    def done(self, generation: int, repaired: bool = False) -> None:
        """The write of `generation` is all in; `repaired`: every write up to it, a lost one
        too (applied again from SQLite)."""
        self.applied = max(self.applied, generation)
        if repaired:
            self.lost = None

    def lose(self, generation: int) -> None:
        """The write of `generation` reached SQLite, not (all of) the index."""
        self.lost = generation if self.lost is None else min(self.lost, generation)

    def claimable(self) -> int:
        """The generation a base folded from the segments now may claim: every write up to
        it is in them, none lost."""
        return self.applied if self.lost is None else min(self.applied, self.lost - 1)

    def begin(self, folding: bool) -> None:
        """A job begins: log the changes from now on (`folding`: it is a compaction)."""
        self.log, self.folding = [], folding

    def end(self) -> None:
        self.log, self.folding = None, False

    def since(self) -> list[Change]:
        """The changes logged since the job began."""
        return self.log or []


__all__ = ["Ledger"]
