"""An import's rows as write batches: every shard's record batches in order, small ones grouped.

A cluster embedding (`imgsearch embed`) leaves thousands of small shards (1,000 rows by
default); written one shard at a time, each became its own transaction, encoding and progress
record. `groups` joins consecutive shards' rows into batches of up to `rows` rows (one
transaction each) and keeps, for each group, which shard every part came from, so progress is
still recorded per shard (the resume point) and bad rows still name their file and row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .format import Rename, RowBatch, ShardInfo, read_batches


@dataclass(frozen=True)
class Unreadable:
    """The rest of a shard that could not be read (in its batches' place, in their order)."""

    info: ShardInfo
    error: Exception


@dataclass
class Group:
    """Consecutive record batches of one or more shards, written as one batch."""

    parts: list[tuple[ShardInfo, RowBatch]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows handled by the group: the good ones and the bad."""
        return sum(len(b.paths) + len(b.bad) for _, b in self.parts)

    def batch(self) -> RowBatch:
        """The parts' good rows as one batch (row numbers are each part's, in its file)."""
        batches = [b for _, b in self.parts]
        if len(batches) == 1:
            return batches[0]
        facts: dict[str, list[Any]] = {}
        for name in {name for b in batches for name in b.facts}:
            facts[name] = [v for b in batches for v in b.facts.get(name) or [None] * len(b.paths)]
        vectors = [b.vectors for b in batches if b.paths]
        extras = []  # a row each where a part has metadata (a part without: empty cells)
        if any(b.extras for b in batches):
            extras = [e for b in batches for e in b.extras or [{}] * len(b.paths)]
        return RowBatch(
            rows=[r for b in batches for r in b.rows],
            paths=[p for b in batches for p in b.paths],
            vectors=np.concatenate(vectors) if vectors else batches[0].vectors,
            facts=facts,
            extras=extras,
            bad=[r for b in batches for r in b.bad],
        )


def shard_batches(
    infos: Iterable[ShardInfo | Unreadable],
    done: dict[str, int],
    batch_rows: int,
    rename: Rename | None,
) -> Iterator[tuple[ShardInfo, RowBatch] | Unreadable]:
    """Every shard's record batches from the row `done` names on, one shard after another; a
    shard that cannot be read ends with an Unreadable and the next one goes on (one known to
    be unreadable already passes on as it is)."""
    for info in infos:
        if isinstance(info, Unreadable):
            yield info
            continue
        try:
            start = done[info.path.name]
            for batch in read_batches(info, start_row=start, batch_rows=batch_rows, rename=rename):
                yield info, batch
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:  # a damaged file
            yield Unreadable(info, exc)  # (or one whose contents surprise us): the others go on


def groups(
    items: Iterator[tuple[ShardInfo, RowBatch] | Unreadable], rows: int
) -> Iterator[Group | Unreadable]:
    """Consecutive record batches joined into groups of at most `rows` rows (a batch is never
    split), in order; an Unreadable ends the group before it and passes on by itself."""
    group = Group()
    for item in items:
        size = 0 if isinstance(item, Unreadable) else len(item[1].paths) + len(item[1].bad)
        if group.parts and (isinstance(item, Unreadable) or group.rows + size > rows):
            yield group
            group = Group()
        if isinstance(item, Unreadable):
            yield item
        else:
            group.parts.append(item)
    if group.parts:
        yield group


__all__ = ["Group", "Unreadable", "groups", "shard_batches"]
