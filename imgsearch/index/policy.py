"""Which index a library of a given size gets: every size threshold, as named constants.

The defaults come from bench/scale.py on this project's 2-core machine (docs/BENCHMARKS.md);
`Policy` carries them so tests (and users, through Config) can lower them and run every kind on
a few hundred vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Exact (brute-force) search while the library holds at most this many vectors: results are
# identical to the old behaviour. Measured (bench/scale.py --crossover, 512-d, one thread, busy
# machine): exact 17 / 35 / 55 ms a query at 25k / 50k / 100k, IVF at recall@10 >= 0.97
# 0.25 / 1.1 / 4.3 ms; exact stays within a few ms of an embedding only up to ~50k.
EXACT_MAX = 50_000
# IVF with full float32 codes while the codes take at most this many bytes; then 8-bit scalar
# quantized codes (4x smaller) up to SQ8_MAX_BYTES; beyond that product quantization.
FLAT_MAX_BYTES = 3 * 1024**3
SQ8_MAX_BYTES = 6 * 1024**3
PQ_BYTES_PER_VECTOR = 64  # PQ sub-quantizers (one byte each)
PQ_MIN_COUNT = 64  # PQ codebooks need a few vectors per code
# Inverted lists: LISTS_PER_SQRT * sqrt(n), trained on TRAIN_PER_LIST vectors per list.
LISTS_PER_SQRT = 4.0
MIN_LISTS = 8
MAX_LISTS = 65_536
TRAIN_PER_LIST = 40
# Retrain when the library has grown this many times over the count the index was trained on.
RETRAIN_GROWTH = 4.0
# Recent adds live in an exact in-memory segment; fold them (and deletions) into a new base
# once the segment holds DELTA_MAX vectors or deletions reach TOMBSTONE_FRACTION of the base.
# The segment may also grow to DELTA_FRACTION of the base (at most DELTA_CAP vectors): each
# compaction rewrites the whole base, so a fixed DELTA_MAX made a big import O(n^2) in I/O;
# growing with the base makes it O(n) overall (the base grows by a quarter per rewrite).
DELTA_MAX = 20_000
DELTA_FRACTION = 0.25
DELTA_CAP = 250_000
# While a bulk import runs, training and compaction wait for it to end (rows stay searchable
# batch by batch through the recent segment) unless the segment outgrows this (float32 codes:
# 400 MB at 512-d).
HELD_DELTA_MAX = 200_000
TOMBSTONE_FRACTION = 0.1
# A first start without a saved base builds it in the background; searches meanwhile scan every
# vector in SQLite (exact; ~6 us of CPU a vector) up to this many images, and beyond it answer
# 503 with Retry-After (a scan of a million would hold a thread for seconds per search).
STORE_SCAN_MAX = 250_000
BUILDING_RETRY_S = 30
# Tuning: recall@RECALL_K of TUNE_QUERIES stored vectors against exact search.
TARGET_RECALL = 0.97
RECALL_K = 10
TUNE_QUERIES = 200
# Quantized codes that cannot reach TARGET_RECALL: re-score RESCORE_FACTOR * k candidates with
# exact vectors from the store.
RESCORE_FACTOR = 8
# A search restricted to at most this many allowed ids is answered exactly from the store.
ALLOWED_EXACT_MAX = 20_000
SEED = 1234


@dataclass(frozen=True)
class Spec:
    """An index to build: its kind and the FAISS index_factory string."""

    kind: str  # "exact", "ivf-flat", "ivf-sq8" or "ivf-pq"
    factory: str
    lists: int = 0

    @property
    def quantized(self) -> bool:
        return self.kind in ("ivf-sq8", "ivf-pq")


@dataclass(frozen=True)
class Policy:
    """The thresholds in force (the module constants unless configured otherwise)."""

    mode: str = "auto"  # "auto" or "exact"
    exact_max: int = EXACT_MAX
    flat_max_bytes: int = FLAT_MAX_BYTES
    sq8_max_bytes: int = SQ8_MAX_BYTES
    delta_max: int = DELTA_MAX
    delta_fraction: float = DELTA_FRACTION
    held_delta_max: int = HELD_DELTA_MAX
    tombstone_fraction: float = TOMBSTONE_FRACTION
    retrain_growth: float = RETRAIN_GROWTH
    target_recall: float = TARGET_RECALL
    allowed_exact_max: int = ALLOWED_EXACT_MAX
    store_scan_max: int = STORE_SCAN_MAX

    def spec(self, count: int, dim: int) -> Spec:
        """The index a library of `count` vectors should have."""
        if self.mode == "exact" or count <= self.exact_max:
            return Spec("exact", "IDMap2,Flat")
        lists = lists_for(count)
        if count * dim * 4 <= self.flat_max_bytes:
            return Spec("ivf-flat", f"IVF{lists},Flat", lists)
        if count * dim <= self.sq8_max_bytes or count < PQ_MIN_COUNT:
            return Spec("ivf-sq8", f"IVF{lists},SQ8", lists)
        m = _pq_subquantizers(dim)
        bits = min(8, int(math.log2(count // 4)))  # 8-bit codes need 256+ training vectors
        return Spec("ivf-pq", f"IVF{lists},PQ{m}x{bits}", lists)

    def delta_limit(self, base_count: int) -> int:
        """How many recent vectors a base of `base_count` carries before a compaction."""
        grown = min(DELTA_CAP, int(self.delta_fraction * base_count))
        return max(self.delta_max, grown)

    def needs_training(self, current: str, trained_count: int, count: int, dim: int) -> bool:
        """Whether the library outgrew the index it has (another kind, or grown several-fold)."""
        wanted = self.spec(count, dim).kind
        if wanted != current:
            return wanted != "exact" or self.mode == "exact" or count <= self.exact_max // 2
        return current != "exact" and count >= self.retrain_growth * max(1, trained_count)


def lists_for(count: int) -> int:
    wanted = round(LISTS_PER_SQRT * math.sqrt(count))
    trainable = max(MIN_LISTS, count // TRAIN_PER_LIST)
    return int(max(1, min(MAX_LISTS, wanted, trainable, count)))


def train_size(lists: int, count: int) -> int:
    return min(count, lists * TRAIN_PER_LIST)


def _pq_subquantizers(dim: int) -> int:
    """The largest divisor of dim up to PQ_BYTES_PER_VECTOR and dim / 4 (PQ needs m | dim)."""
    for m in range(max(1, min(PQ_BYTES_PER_VECTOR, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1
