"""Searching what a library index has published: its segments, or the store itself while the
first base is built.

A search of quantized codes asks the segments for more candidates than it returns and
re-scores them with exact vectors from the store; where the base has fine codes (fine.py) it
asks for a bigger pool, ranks it by them and re-scores only the best (the tuned depth). When
it is the only search in flight and the index is idle, one search's scan is split over two
threads (segments.Segments.search with a helper).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..errors import Busy
from . import base as B
from . import fine as F
from .build import Source
from .hits import Hits, exact_among, merge, rescored
from .policy import BUILDING_RETRY_S, QUANTIZED
from .segments import Segments

SEARCH_THREADS = 1
# A search scans its probed lists on two threads (the request's and one helper: half the lists
# each) when nothing else wants the CPU: it is the only search in flight, no training or
# compaction runs and no bulk import holds the index. So at most two threads search at once,
# and concurrent searches each keep one. Only from SPLIT_MIN_NPROBE lists (below, the hand-off
# costs more than half a scan of a few lists saves).
SPLIT_MIN_NPROBE = 32
EXTRA = 10  # quantized codes: candidates beyond k re-scored exactly (near-duplicates' order)
# At most this many candidates re-scored a query (the depth is tuned at k = 10, where 100 x k
# is 1,000 rows; a limit=1000 search at that depth would read 100,000 rows from SQLite), but
# never fewer than k + EXTRA.
RESCORE_MAX_ROWS = 5_000
# A search slower than this is logged with where its time went (the scan of the segments, the
# lock of the recent one, the re-scoring read from SQLite): the bound on any search.
SLOW_SEARCH_MS = 500.0
# The re-scoring read (k x rescore rows: 100 at k = 10) asks SQLite for one row after another;
# at 10M the database does not fit the page cache, so each row may be a disk read, and while
# other writes fill the disk's queue one read waits behind many. From READ_SPLIT_MIN rows the
# ids are then read in READ_PARTS contiguous parts side by side (each thread has its own
# reader): 2.8 ms for 100 rows against 5.1 on one thread (bench/rescore_read.py, 10M). Where
# the rows come from the page cache the hand-offs cost more than they save (100k: 0.65 ms for
# 40 rows split, 0.35 on one thread), so reads are split only while reads on one thread take
# over SLOW_ROW_US a row (a running mean); one read in PROBE_EVERY of a split mode is made on
# one thread to see whether that still holds (the page cache fills and empties).
READ_PARTS = 4
READ_SPLIT_MIN = 32
SLOW_ROW_US = 20.0
PROBE_EVERY = 64
ROW_US_WEIGHT = 0.5  # of the newest one-thread read in the running mean
# A disk whose random reads are slow: once SLOW_DISK_READS one-thread reads have been timed and
# their running mean is over SLOW_DISK_ROW_US a row, searches wait on the disk more than on
# anything else (`slow_disk`), and the service reads the database into the page cache
# (store/warming.py, `--warm-database auto`). This project's virtio disk read a cold row in
# 25-100 us; limited to 200 reads a second (a disk like a spinning one) ~7,800 us, a 9M
# search 500 ms p50 where it took 7.7 once the file was cached (docs/BENCHMARKS.md).
# Two timed reads: the first after a start, the next PROBE_EVERY reads on while reads split.
SLOW_DISK_ROW_US = 1_000.0
SLOW_DISK_READS = 2

log = logging.getLogger(__name__)


class Searcher:
    """Searches of published segments, counted, with one helper thread for split scans."""

    def __init__(self, source: Source, clock: Callable[[], float] = time.perf_counter) -> None:
        self.source = source
        self.clock = clock  # seconds, for the one-thread reads' µs a row
        self.searching = 0  # searches in flight (under _counting)
        # Searches answered from the segments and their ms by stage, summed since the start
        # (under _counting; /stats shows them, bench/search_profile.py takes differences).
        self.times = {"searches": 0.0, "lists_ms": 0.0, "fine_codes_ms": 0.0, "rescoring_ms": 0.0}
        self._counting = threading.Lock()
        self.helper = ThreadPoolExecutor(1, "search-helper", one_omp_thread)
        self.readers = ThreadPoolExecutor(READ_PARTS - 1, "rescore-read")
        # Running mean of µs a row of the one-thread reads (0: none yet), and reads counted
        # for the probes (both updated without a lock: an estimate, a lost update is harmless).
        self.row_us = 0.0
        self._reads = 0
        self.measured = 0  # one-thread reads timed
        self.closed = False  # then searches go on, on the calling thread alone

    def search(
        self, seg: Segments, queries: np.ndarray, k: int, allowed: np.ndarray | None, idle: bool
    ) -> Hits:
        """Best k of `seg` (quantized hits re-scored exactly); `idle`: nothing else in the
        index wants the CPU (the split is used only then, and only for a lone search)."""
        meta = seg.base.meta
        quantized = meta.kind in QUANTIZED  # similarities of hits always exact, from the store
        fine = seg.base.fine if quantized else None
        depth = meta.rescore
        if quantized and fine is None and meta.fine:  # tuned with fine codes, lost since:
            depth = max(depth, F.POOL)  # POOL x k re-scored until they are made again
        read = k * depth if depth else k + (EXTRA if quantized else 0)
        wanted = F.pool(k, read, seg.transform is not None) if fine is not None else read
        if quantized:
            cap = max(RESCORE_MAX_ROWS, k + EXTRA)
            read, wanted = min(read, cap), min(wanted, cap)
        nprobe = max(1, meta.nprobe)
        stages: dict[str, float] = {}
        start = time.perf_counter()
        with self._counting:
            self.searching += 1
            alone = self.searching == 1
        try:
            helper = self.helper if alone and idle and not self.closed else None
            sims, ids = seg.search(queries, wanted, allowed, nprobe, _over(helper, nprobe), stages)
            need = min(read, len(seg) if allowed is None else len(allowed))
            lists = int(getattr(B.ivf(seg.base.index), "nlist", 0))
            while nprobe < lists and int((ids >= 0).sum(axis=1).min()) < need:
                nprobe = min(lists, nprobe * 4)  # a filter left too few: look in more lists
                sims, ids = seg.search(queries, wanted, allowed, nprobe, _over(helper, nprobe))
        finally:
            with self._counting:
                self.searching -= 1
        scanned, candidates = time.perf_counter(), int((ids >= 0).sum()) if quantized else 0
        if fine is not None and wanted > read:
            ids = fine.rank(queries, ids, read)
        ranked, rows = time.perf_counter(), int((ids >= 0).sum()) if quantized else 0
        if quantized:
            sims, ids = rescored(queries, ids, k, self.vectors)
        end = time.perf_counter()
        total = (end - start) * 1000
        with self._counting:
            self.times["searches"] += 1
            self.times["lists_ms"] += (scanned - start) * 1000
            self.times["fine_codes_ms"] += (ranked - scanned) * 1000
            self.times["rescoring_ms"] += (end - ranked) * 1000
        if total > SLOW_SEARCH_MS:
            log.warning(
                "slow search: %.0f ms: segments %.0f ms (base %.0f, waiting for the recent "
                "segment's lock %.0f, recent %.0f; nprobe %d%s), %d candidates ranked by fine "
                "codes %.0f ms, re-scoring %d rows from the store %.0f ms",
                total, (scanned - start) * 1000, stages.get("base", 0), stages.get("lock", 0),
                stages.get("recent", 0), nprobe, ", split" if helper else "",
                candidates if fine is not None else 0, (ranked - scanned) * 1000, rows,
                (end - ranked) * 1000,
            )  # fmt: skip
        return sims, ids

    def timings(self) -> dict[str, float | int]:
        """Searches of the segments since the start and their ms by stage, summed: the probed
        lists (coarse assignment, scan, recent segment), ranking by fine codes, re-scoring
        (the exact vectors' read from SQLite and their scores)."""
        with self._counting:
            times = dict(self.times)
        return {name: int(v) if name == "searches" else round(v, 3) for name, v in times.items()}

    def vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Exact vectors of the sorted `ids` that are stored, from the store: (ids, vectors),
        read in READ_PARTS parts side by side where rows come slowly (from the disk)."""
        if len(ids) < READ_SPLIT_MIN or self.closed:
            return self.source.vectors(ids)
        self._reads += 1
        if self.row_us <= SLOW_ROW_US or self._reads % PROBE_EVERY == 0:
            start = self.clock()
            read = self.source.vectors(ids)
            row_us = (self.clock() - start) * 1e6 / len(ids)
            self.measured += 1
            self.row_us = row_us if not self.row_us else (
                ROW_US_WEIGHT * row_us + (1 - ROW_US_WEIGHT) * self.row_us
            )  # fmt: skip
            return read
        parts = [part.tolist() for part in np.array_split(np.asarray(ids), READ_PARTS)]
        try:
            others = [self.readers.submit(self.source.vectors, part) for part in parts[1:]]
        except RuntimeError:  # closed meanwhile (the daemon is stopping): read them here
            return self.source.vectors(ids)
        got = [self.source.vectors(parts[0]), *(other.result() for other in others)]
        found = [(ids_, vectors) for ids_, vectors in got if len(ids_)]
        if not found:
            return got[0]
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])

    def slow_disk(self) -> bool:
        """Whether the re-scoring reads have been seen to come slowly from the disk
        (SLOW_DISK_ROW_US a row, over SLOW_DISK_READS timed reads)."""
        return self.measured >= SLOW_DISK_READS and self.row_us >= SLOW_DISK_ROW_US

    def close(self) -> None:
        self.closed = True
        self.helper.shutdown(wait=False)
        self.readers.shutdown(wait=False)


def scan_store(
    source: Source, queries: np.ndarray, k: int, allowed: np.ndarray | None, most: int
) -> Hits:
    """Exact best k over every present vector in SQLite (while the first base builds); Busy
    (503, retry later) for a library of over `most` images, whose scan would hold a thread for
    seconds."""
    count = source.count()
    if count > most:
        raise Busy(
            f"the index of {count} images is being built (no saved index at start-up); "
            "searches resume when it is ready",
            BUILDING_RETRY_S,
        )
    none = np.zeros((len(queries), 0))
    best = (none.astype(np.float32), none.astype(np.int64))
    for ids, vectors in source.chunks():
        if allowed is not None:
            keep = np.isin(ids, allowed, assume_unique=True)
            ids, vectors = ids[keep], vectors[keep]
        best = merge([best, exact_among(queries, k, ids, vectors)], k)
    return best


def one_omp_thread() -> None:
    """One OpenMP thread for the calling thread from now on (the search helper's): a few
    queries gain nothing from more, and on a busy machine waking them costs more than the
    search (docs/BENCHMARKS.md). The setting is per OS thread: background training keeps
    every core."""
    import faiss

    faiss.omp_set_num_threads(SEARCH_THREADS)


@contextmanager
def searching_threads() -> Iterator[None]:
    """One OpenMP thread for a search on the calling (request) thread, its count before given
    back after: FAISS and torch share one OpenMP runtime, and the reused thread embeds the next
    query in torch, which left at one thread ran on 1 of its --threads ever after."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEARCH_THREADS)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _over(helper: ThreadPoolExecutor | None, nprobe: int) -> ThreadPoolExecutor | None:
    """The helper thread, if a scan of `nprobe` lists is worth splitting."""
    return helper if nprobe >= SPLIT_MIN_NPROBE else None
