"""SQLite store: the source of truth for image paths, file facts, vectors, jobs and watches.

`Store` opens the database (db.py: one writer, per-thread readers, WAL), migrates it
(migrations.py) and holds one object per table family: `images`, `jobs`, `watches`, `meta`.
The few reads the upper layers use everywhere are also methods of `Store` itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .db import Database, page_size
from .images import (
    FileState,
    ImageRow,
    Images,
    Located,
    StoredFile,
    VectorChunk,
    WriteResult,
)
from .jobs import JobRow, Jobs
from .meta import Meta
from .metadata import Metadata, MetadataTable
from .migrations import MIGRATIONS, migrate
from .rows import UNKNOWN_SHA256, FileFacts, NewImage, Rows, stacked
from .upsert import VECTOR_DTYPE
from .watches import Watches

__all__ = [
    "MIGRATIONS",
    "ROW_EXTRA",
    "FileFacts",
    "FileState",
    "ImageRow",
    "JobRow",
    "Located",
    "Metadata",
    "NewImage",
    "Rows",
    "stacked",
    "Store",
    "StoredFile",
    "UNKNOWN_SHA256",
    "VectorChunk",
    "WriteResult",
]


# An image row's bytes beside its vector: an 80-byte path, the sha256 in hex, the file facts and
# generation stamps, the record's header.
ROW_EXTRA = 200


class Store:
    """The database under the data directory, migrated on open."""

    def __init__(self, path: Path, dim: int = 0) -> None:
        """`dim`: the vectors' dimension where known, which sizes a new file's pages to its
        rows (db.page_size)."""
        self.path = path
        self.db = Database(path, page_size(ROW_EXTRA + np.dtype(VECTOR_DTYPE).itemsize * dim))
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise
        self.meta = Meta(self.db)
        self.images = Images(self.db)
        self.jobs = Jobs(self.db)
        self.watches = Watches(self.db)
        # Per-image metadata: get(ids) -> {id: {...}}, replace({id: {...}}), matching(...).
        self.metadata = MetadataTable(self.db)

    def close(self) -> None:
        self.db.close()

    # -- shortcuts for the reads every layer uses ------------------------------------------------

    def generation(self) -> int:
        return self.meta.generation()

    def count(self) -> int:
        return self.images.count()

    def missing(self) -> int:
        return self.images.missing()

    def ids(self) -> np.ndarray:
        return self.images.ids()

    def file_states(self, paths: Sequence[str]) -> dict[str, FileState]:
        return self.images.file_states(paths)

    def files_under(self, path: str) -> list[StoredFile]:
        return self.images.files_under(path)

    def paths(self, ids: Sequence[int], present: bool = False) -> dict[int, Located]:
        return self.images.paths(ids, present)

    def vectors(
        self, since_generation: int = 0, chunk: int = 10_000, ids: Sequence[int] | None = None
    ) -> Iterator[VectorChunk]:
        return self.images.vectors(since_generation, chunk, ids)
