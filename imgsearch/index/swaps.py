"""How a background job's result is published: the changes written while it ran (the index's
log) applied on top of it, the bulk of them off the lock in passes, the last few under it,
then one reference assignment (manager.py: `_swap` for a new base, `_carry` for the current
base's codes tuned again or given new fine codes)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .fine import Fine
from .segments import Change

# The changes logged during a job are applied off the lock in up to SWAP_PASSES passes, until
# at most SWAP_UNDER_LOCK rows are left to apply under it (writes wait for those only).
SWAP_PASSES = 3
SWAP_UNDER_LOCK = 2_000


def published(
    lock: threading.Lock,
    logged: Callable[[], list[Change]],
    apply: Callable[[list[Change]], None],
    publish: Callable[[], None],
) -> None:
    """`apply` every change `logged` returns (it grows while writes go on), then `publish`
    under `lock` with none left out."""
    done = 0
    for last in range(SWAP_PASSES + 1):
        with lock:
            pending = logged()[done:]
            if last == SWAP_PASSES or sum(len(e[2]) for e in pending) <= SWAP_UNDER_LOCK:
                apply(pending)
                publish()
                return
        apply(pending)
        done += len(pending)


def fine_of(fine: Fine | None) -> Callable[[list[Change]], None]:
    """Writes the fine codes of the rows that changes added with vectors (None: nothing to
    write, as where the fine codes did not change)."""

    def write(changes: list[Change]) -> None:
        if fine is None:
            return
        for _generation, _op, ids, data in changes:
            if isinstance(data, np.ndarray) and len(data) == len(ids):
                fine.put(ids, data)

    return write
