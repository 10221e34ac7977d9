"""Fine codes: a second, finer code of every vector of a quantized index, to re-rank a
search's candidates in memory before the best few are read exactly from the store.

The IVF's fast-scan codes (4 bits per 2 or 4 dimensions) are made to be scanned, not to rank: on
embedding-like data a search must re-score 100 x k of their candidates to find the true top 10
(bench/ivf_reach.py), and reading 1,000 exact vectors from SQLite was most of a 10M search.
A code of dim / 2 bytes a vector (quantizers.py: 8 bits on the directions a query's score
depends on most, 4 on the middle, none on the last, chosen and trained with the index) ranks
those candidates nearly as well as the exact vectors (bench/fine_ab.py, docs/BENCHMARKS.md)
at ~0.25 us a candidate in memory, scored on the codes as they are: a
search ranks a pool of `POOL` x k by them and reads only the best rescore x k from the store
(the tuning measures which depth reaches the recall target), so a hit's similarity is still
exact.

The codes live in one file per training under the index folder (`fine-<stamp>.u8`), memory-mapped,
row `id` holding the code of store id `id` (ids are SQLite row ids: dense, growing): an add
writes its row before its vector is searchable, a removal leaves a row no search reaches, and
compaction moves nothing. Bases of one training share the file; a new training writes a new one.
Nothing in it is the truth: a row written after the saved base's generation is written again
when start-up replays it, and the file is flushed before a base that counts on it is saved.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import quantizers as Q
from .quantizers import Quantizer

log = logging.getLogger(__name__)

# A search of a base with fine codes takes at least POOL x k candidates from the IVF's codes,
# ranks them all by their fine codes, and re-scores the best rescore x k (the depth tuned with
# nprobe: policy.RESCORE_FACTORS) with exact vectors from the store. At 1M (spectral, nprobe
# 1,024, 1,000 candidates) the best 40 by fine codes held the true top 10 as often as all
# 1,000 re-scored (recall@10 0.9815 against 0.984), where the IVF's own first 100 reached
# 0.953 (bench/fine_rank.py; 4 bits on every dimension then, quantizers.Nibbles); ranking
# 1,000 costs ~0.25 ms, reading them from SQLite ~15.
# (Fast-scan codes of half the size, dim / 4 sub-quantizers of the unrotated vectors, with a
# pool of 300 x k did as well at 1M, but not at 10M: there the true top 10 were among the
# 3,000 best of their codes too rarely for recall@10 0.97 at any nprobe (0.963 with every
# list probed). Codes of that size on the residuals' principal directions (rotation.py, the
# policy's since 2026-12-06) fill a pool of 200 x k as the twice bigger ones filled 100 x k:
# ROTATED_POOL, below.)
# (A pool of 200 x k held the true top 10 of new photos 0.0045 more often at 10M, as ~25% more
# lists did, but the tuning, on stored vectors, found the same nprobe with it: that recall
# for ~1 ms more a search, not fewer lists; bench/fine_ab.py --pools, docs/BENCHMARKS.md.)
# Codes on the residuals' principal directions (rotation.py), at half the bytes, hold the true
# top 10 of a 10M library among their best 1,000 less often: 0.985 of new photos at nprobe
# 1,392 against 0.9885 among their best 2,000 (bench/cascade.py), and on stored vectors, as the
# tuning searches, 0.99 was not reached at any nprobe with 1,000 (bench/scale.py, 10M: it fell
# back to 0.97 at nprobe 768). So their pool is ROTATED_POOL x k: ranking 2,000 costs ~0.3 ms
# more, the scan of a list ~0.6x of the codes before.
POOL = 100
ROTATED_POOL = 200
PREFIX, SUFFIX = "fine-", ".u8"
GROWTH = 1.5  # the file grows by half again when an id falls beyond it (sparse: no disk used)
MIN_ROWS = 1 << 16
# A saved table is faulted in at start-up WARM_BYTES of the mapping at a time (warm()).
WARM_BYTES = 16 << 20


class FineTable:
    """A file of fixed-size rows, row i for id i, grown (sparse) as ids grow; read through one
    shared mapping, written with pwrite. A write through the mapping into a hole or a block
    the disk cannot give (a full disk; on a copy-on-write file system such as btrfs, any
    block rewritten) is a SIGBUS that kills the daemon, and the next start, writing the same
    rows again, died the same way; pwrite fails with ENOSPC instead, which the add or import
    reports (reserving the blocks first, posix_fallocate, prevents it on ext4, xfs and tmpfs
    but not on btrfs). The rows written are then read through the mapping, so they stay
    mapped (resident in the daemon's memory, 2.5 GB at 10M: the price of the fine codes), as
    a start-up's warm() maps a saved file: read through a MADV_RANDOM mapping only when a
    search asked for them, they were page cache the kernel could drop, and after a 10 GB read
    elsewhere a 10M search took 46 ms p50 faulting them back in, not 22 (docs/BENCHMARKS.md)."""

    def __init__(self, path: Path, row_bytes: int) -> None:
        self.path, self.row_bytes = path, row_bytes
        self._grow = threading.Lock()
        self._warming = False  # warm() is reading the file in: a gather asks for its pages first
        self._warm_at = 0  # the bytes warm() has read in so far (those pages are not asked)
        if not path.exists():
            with open(path, "wb") as fh:
                fh.truncate(MIN_ROWS * row_bytes)
        self.rows = self._map()

    def _map(self) -> np.memmap[Any, np.dtype[np.uint8]]:
        size = self.path.stat().st_size
        count = size // self.row_bytes
        return np.memmap(self.path, np.uint8, "r", shape=(count, self.row_bytes))

    def put(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Write each id's row (ids from any thread; a growth remaps under a lock)."""
        if not len(ids):
            return
        top = int(ids.max())
        if top >= len(self.rows):
            with self._grow:
                rows = self._map()
                if top >= len(rows):
                    with open(self.path, "r+b") as fh:
                        fh.truncate(max(top + 1, int(len(rows) * GROWTH)) * self.row_bytes)
                self.rows = self._map()  # (another table object on the file may have grown it)
        self._write(ids, np.ascontiguousarray(codes, np.uint8))
        np.bitwise_or.reduce(self.rows[ids], axis=None)  # mapped (resident), as they were written

    def _write(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """pwrite each run of consecutive ids as one block (an id twice: its last row); an
        OSError (ENOSPC where the disk is full) leaves rows before it written."""
        order = np.argsort(ids, kind="stable")
        ids, codes = ids[order], codes[order]
        cuts = np.flatnonzero(np.diff(ids) != 1) + 1
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(ids)]])
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for first, last in zip(starts.tolist(), ends.tolist(), strict=True):
                block = codes[first:last].reshape(-1).data
                at = int(ids[first]) * self.row_bytes
                while block:  # (pwrite may write less than asked)
                    done = os.pwrite(fd, block, at)
                    block, at = block[done:], at + done
        finally:
            os.close(fd)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The rows of `ids` (a row never written reads as zeros)."""
        rows = self.rows
        if len(ids) and int(ids.max()) >= len(rows):
            with self._grow:
                self.rows = rows = self._map()
        if self._warming and len(ids) > 1:
            self._ask(ids)
        return np.asarray(rows[ids])

    def _ask(self, ids: np.ndarray) -> None:
        """Ask the kernel for the pages of these rows at once (posix_fadvise), so that the
        gather's faults wait for reads made side by side, not one after the other: while
        the file is read in, a search's candidates are mostly still on the disk."""
        start = ids.astype(np.int64) * self.row_bytes
        pages = np.unique(np.concatenate([start, start + self.row_bytes - 1]) // mmap.PAGESIZE)
        pages = pages[pages >= self._warm_at // mmap.PAGESIZE]
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:  # advice only: a refusal leaves the gather to fault its pages in as before
            for page in pages.tolist():
                os.posix_fadvise(fd, page * mmap.PAGESIZE, mmap.PAGESIZE, os.POSIX_FADV_WILLNEED)
        except OSError as exc:
            log.debug("fine codes' pages not asked for: %s", exc)
        finally:
            os.close(fd)

    def warm(self, stop: threading.Event, rows: int | None = None) -> int:
        """Fault the table's first `rows` rows (default all) into the mapping, one byte a page,
        WARM_BYTES at a time, until done or `stop`; return the bytes covered. Each step is a
        numpy reduction, which lets go of the GIL while the pages come in, over pages the
        kernel was asked to read ahead during the step before (posix_fadvise, also without
        the GIL): the reduction's first page, read with the GIL held, is then in memory
        already. A search ranks its 1,000 candidates by rows spread over the whole file: read
        cold, each is a page from the disk (the first search after a restart at 10M: 1.5 s in
        the fine codes, docs/BENCHMARKS.md)."""
        flat = self.rows.reshape(-1)
        if rows is not None:
            flat = flat[: rows * self.row_bytes]
        size, done = len(flat), 0
        fd = os.open(self.path, os.O_RDONLY)
        self._warming, self._warm_at = True, 0
        try:
            os.posix_fadvise(fd, 0, min(WARM_BYTES, size), os.POSIX_FADV_WILLNEED)
            for start in range(0, size, WARM_BYTES):
                if stop.is_set():
                    break
                ahead = min(WARM_BYTES, size - start - WARM_BYTES)
                if ahead > 0:
                    os.posix_fadvise(fd, start + WARM_BYTES, ahead, os.POSIX_FADV_WILLNEED)
                np.bitwise_or.reduce(flat[start : start + WARM_BYTES : mmap.PAGESIZE])
                done = self._warm_at = min(size, start + WARM_BYTES)
        finally:
            self._warming = False
            os.close(fd)
        return done

    def covers(self, top: int) -> bool:
        """Whether the file has a row for every id up to `top`."""
        return self.path.stat().st_size >= (top + 1) * self.row_bytes

    def flush(self) -> None:
        """Rows written so far on disk (before a base that counts on them is saved)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Fine:
    """A trained quantizer (quantizers.py) and the codes it made."""

    quantizer: Quantizer
    table: FineTable

    @classmethod
    def train(cls, sample: np.ndarray, folder: Path) -> Fine:
        """A quantizer trained on `sample`, writing a new file in `folder`."""
        quantizer = Q.train(sample)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{PREFIX}{uuid.uuid4().hex[:12]}{SUFFIX}"
        return cls(quantizer, FineTable(path, quantizer.code_size))

    @property
    def name(self) -> str:
        return self.table.path.name

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        if not len(vectors):
            return np.zeros((0, self.table.row_bytes), np.uint8)
        return self.quantizer.encode(vectors)

    def put(self, ids: np.ndarray, vectors: np.ndarray, codes: np.ndarray | None = None) -> None:
        """Write the codes of `ids` (`codes`: encode() of `vectors`, made ahead)."""
        self.table.put(ids, self.encode(vectors) if codes is None else codes)

    def rank(self, queries: np.ndarray, ids: np.ndarray, keep: int) -> np.ndarray:
        """Each query's best `keep` of its candidate ids (-1 padded) by the fine codes. (Half
        of them scored on a helper thread, as a lone search scans, measured no quicker:
        bench/fine_score.py.)"""
        out = np.full((len(ids), min(keep, ids.shape[1])), -1, np.int64)
        for q, row in enumerate(ids):
            found = row[row >= 0]
            if len(found) > keep:
                query = np.asarray(queries[q], np.float32)
                approx = self.quantizer.scores(self.table.get(found), query)
                found = found[np.argpartition(-approx, keep - 1)[:keep]]
            out[q, : len(found)] = found
        return out


def pool(k: int, read: int, rotated: bool = False) -> int:
    """Candidates a search for k results asks the IVF for when it re-scores `read` of them
    from the store: at least POOL x k (ROTATED_POOL x k for `rotated` codes, rotation.py),
    ranked by the fine codes first."""
    return max(read, k * (ROTATED_POOL if rotated else POOL))


def tables(folder: Path) -> list[Path]:
    """Every fine-code file in an index folder."""
    return sorted(folder.glob(f"{PREFIX}*{SUFFIX}")) if folder.is_dir() else []
