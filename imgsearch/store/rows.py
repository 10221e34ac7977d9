"""Images to write: one at a time (`NewImage`), or a batch as columns (`Rows`).

A bulk import's batch of 20,000 rows goes from its Parquet columns to SQLite's bound
parameters as columns: no object a row on the way (an import is bound by the interpreter,
whose lock every request's thread waits for; per-row objects were a third of its time there:
py-spy --gil, docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

import numpy as np

# The prefix of a stand-in hash (an imported row that came without one): unique to its path,
# so no two such rows look byte-identical and no move is followed from one.
UNKNOWN_SHA256 = "unknown:"
# Bytes that `stacked` copies with one join: a join holds the GIL until it is done (20,000
# rows of 512-d at once: other threads paused 18-22 ms, an import's writer stalling every
# request's thread; ~1 MB at a time: 2.2-2.7 ms; bench/gil_holds.py --what vectors).
JOIN_BYTES = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class FileFacts:
    """What is stored about an image file besides its vector."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    source: str | None = None  # the URL a downloaded image came from

    @property
    def hashed(self) -> bool:
        """Whether sha256 is the file's hash, not UNKNOWN_SHA256's stand-in."""
        return not self.sha256.startswith(UNKNOWN_SHA256)


@dataclass(frozen=True)
class NewImage:
    """An embedded file, ready to be written."""

    facts: FileFacts
    vector: np.ndarray


@dataclass(frozen=True)
class Rows:
    """Embedded images as columns, row i of each one image; `vectors` float32 [n, dim]."""

    paths: list[str]
    sizes: list[int]
    mtimes: list[int]
    sha256: list[str]
    widths: list[int]
    heights: list[int]
    sources: list[str | None]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.paths)
        columns = (self.sizes, self.mtimes, self.sha256, self.widths, self.heights, self.sources)
        if any(len(c) != n for c in columns) or len(self.vectors) != n:
            raise ValueError("columns of different lengths")

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def of(cls, items: Sequence[NewImage]) -> Rows:
        """`items` as columns (their vectors stacked once)."""
        return cls.of_facts([item.facts for item in items], stacked([i.vector for i in items]))

    @classmethod
    def of_facts(cls, facts: Sequence[FileFacts], vectors: np.ndarray) -> Rows:
        """Files' facts and their vectors (row i for file i) as columns."""
        return cls(
            [f.path for f in facts],
            [f.size for f in facts],
            [f.mtime_ns for f in facts],
            [f.sha256 for f in facts],
            [f.width for f in facts],
            [f.height for f in facts],
            [f.source for f in facts],
            _matrix(vectors, len(facts)),
        )

    def facts(self, i: int) -> FileFacts:
        """Row i's facts."""
        return FileFacts(
            self.paths[i],
            self.sizes[i],
            self.mtimes[i],
            self.sha256[i],
            self.widths[i],
            self.heights[i],
            self.sources[i],
        )

    def take(self, picks: Sequence[int] | np.ndarray) -> Rows:
        """The rows at `picks`, in that order (this batch itself for range(len(self)))."""
        if isinstance(picks, range) and picks == range(len(self)):
            return self
        at = picks.tolist() if isinstance(picks, np.ndarray) else list(picks)
        return Rows(
            _pick(self.paths, at),
            _pick(self.sizes, at),
            _pick(self.mtimes, at),
            _pick(self.sha256, at),
            _pick(self.widths, at),
            _pick(self.heights, at),
            _pick(self.sources, at),
            self.vectors[np.asarray(at, dtype=np.int64)],
        )

    def hashed(self) -> list[int]:
        """The rows whose sha256 is the file's hash (not UNKNOWN_SHA256's stand-in)."""
        return [i for i, digest in enumerate(self.sha256) if not digest.startswith(UNKNOWN_SHA256)]


def _pick(values: list[T], at: list[int]) -> list[T]:
    """values[i] for i in `at` (itemgetter: one C call, not a Python step an item)."""
    if len(at) == 1:
        return [values[at[0]]]
    return list(itemgetter(*at)(values)) if at else []


def _matrix(vectors: np.ndarray, n: int) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, np.float32)
    return matrix.reshape(n, -1) if n else matrix.reshape(0, matrix.shape[-1] if matrix.ndim else 0)


def stacked(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Vectors of one length as one float32 matrix [n, dim], copied through bytes joins of
    JOIN_BYTES each.

    np.array of a list of rows copies each row by itself and lets go of the GIL for every row
    over 500 values (a 512-d vector); with a busy Python thread beside (an import's reader)
    each row then waits up to the switch interval to take it back: 20,000 rows took 1.1-3.2 s
    so, 0.08 s joined (ad hoc; the whole write: bench/sqlite_writes.py --busy). One join of
    them all held the GIL as long as it copied (JOIN_BYTES)."""
    rows = [np.ascontiguousarray(v, np.float32).reshape(-1) for v in vectors]  # float32: views
    if not rows:
        return np.zeros((0, 0), np.float32)
    dim = len(rows[0])
    if any(len(r) != dim for r in rows):
        raise ValueError("vectors of different lengths")
    out = np.empty((len(rows), dim), np.float32)
    step = max(1, JOIN_BYTES // max(1, 4 * dim))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        joined = b"".join([r.data for r in part])
        out[start : start + len(part)] = np.frombuffer(joined, np.float32).reshape(len(part), dim)
    return out


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """The Euclidean length of each row of a 2-d float matrix (NaN or inf where a row holds
    one), by one pass without a squared copy: np.linalg.norm squares the whole matrix first
    (4x the time at 512-d)."""
    norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return norms
