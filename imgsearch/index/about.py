"""What `/stats` says about the index (`index`): one reading of the segments, as JSON values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .policy import TUNE_QUERIES
from .segments import Segments


def about(
    seg: Segments,
    vectors: int,
    planned: int,
    origin: str,
    state: str,
    timings: dict[str, Any],
    error: str | None = None,
) -> dict[str, Any]:
    """`seg` described with the manager's own state: the vectors searches find (`vectors`),
    the planned size of the imports in progress, how the index came up, what the worker is
    doing, the searches' timings, and why its last job failed (None: it did not)."""
    meta = seg.base.meta
    fine = seg.base.fine
    tuned = meta.nprobe > 0
    return {
        "kind": meta.kind,
        "factory": meta.factory,
        "vectors": vectors,
        "base": len(seg.base),
        "recent": int(seg.recent.ntotal),
        "deleted": seg.dead,
        "nprobe": meta.nprobe or None,
        "recall_at_10": meta.recall,
        "target_recall": meta.tuned_for if tuned else None,
        "rescore": meta.rescore or None,
        "tuning_queries": (meta.tune_queries or TUNE_QUERIES) if tuned else None,
        "fine_codes": fine.quantizer.describe() if fine is not None else None,
        "centred_lists": meta.centred if meta.kind != "exact" else None,
        "trained_at": iso(meta.trained_at),
        "trained_count": meta.trained_count,
        "planned": planned or None,
        "generation": meta.generation,
        "origin": origin,
        "state": state,
        "error": error,
        "search_time": timings,
    }


def iso(stamp: float) -> str | None:
    """A Unix time as ISO 8601 in UTC to the second (None for 0: never)."""
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds") if stamp else None
