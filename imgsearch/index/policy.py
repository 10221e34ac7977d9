"""Which index a library of a given size gets: every size threshold, as named constants.

The defaults come from bench/scale.py on this project's 2-core machine (docs/BENCHMARKS.md);
`Policy` carries them so tests (and users, through Config) can lower them and run every kind on
a few hundred vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .kmeans import NEVER as NEVER  # (Policy.tree_from's default)
from .rotation import ROTATED

# Exact (brute-force) search while the library holds at most this many vectors: results are
# identical to the old behaviour. Measured (bench/scale.py --crossover, 512-d, one thread, busy
# machine): exact 17 / 35 / 55 ms a query at 25k / 50k / 100k, IVF at recall@10 >= 0.97
# 0.25 / 1.1 / 4.3 ms; exact stays within a few ms of an embedding only up to ~50k.
EXACT_MAX = 50_000
# Beyond EXACT_MAX: IVF with 4-bit fast-scan PQ codes (dim / 2 sub-quantizers until 2026-12-06:
# dim / 4 bytes a vector, 128 B at 512-d; see PQ_DIMS_PER_CODE for today's) whose candidates
# are re-scored with exact vectors from the store.
# At 1M (one-cone synthetic data, 1000 lists probed up to all) dim / 4 sub-quantizers could not
# put the true top 10 among 100 candidates (recall 0.942 at best; 0.978 with 500 candidates);
# dim / 2 did (0.996 at nprobe 200 of 1000), for 2x the bytes and ~1.6x the scan.
# In process, 200k x 512-d, one thread (docs/BENCHMARKS.md, bench/search_path.py), dim / 4
# codes answered at recall@10 0.97 in ~0.4 ms of FAISS + ~0.9 ms reading 100 candidates' exact
# vectors, where IVF-Flat codes took ~5-10 ms and SQ8 ~6 ms: codes 8-16x smaller, scanned in
# AVX2 registers. Full float32 codes (ivf-flat) only while they take at most FLAT_MAX_BYTES:
# none by default (tests and users can raise it), and for libraries too small to train PQ
# codebooks (PQ_MIN_COUNT).
FLAT_MAX_BYTES = 0
# Since 2026-12-06 the codes are 4 bits on each of the first dim / 4 principal directions of
# the residuals (rotation.py: 64 B a vector at 512-d), which rank a 10M search's pool as well
# as FAISS's PQ on dim / 2 sub-quantizers of the unrotated space did, for 0.6x of the scan.
# Where those directions hold too little of the residuals' variance (rotation.MIN_CODED_SHARE:
# uniform or clustered vectors) a training keeps the unrotated kind instead (unrotated()).
PQ_DIMS_PER_CODE = 4  # dimensions per 4-bit sub-quantizer (one of them coded)
PQ_MIN_COUNT = 256  # 4-bit codebooks need 16 centroids from enough vectors
# Inverted lists: LISTS_PER_SQRT * sqrt(n), at most MAX_LISTS, trained on TRAIN_PER_LIST
# vectors per list, at most MAX_TRAIN but MIN_TRAIN_PER_LIST (k-means costs sample x lists x
# dim x 2 flops an iteration; see BENCHMARKS). 16, not the 4 of earlier versions: on the 1M
# clustered library 16,000 lists reach recall@10 0.98 scanning 11% of the codes, 3.2 ms of
# CPU a query, where 4,000 scan over half of them (bench/ivf_reach.py; docs/BENCHMARKS.md
# "16 sqrt(n) lists trained two-level"). At most 16,384: every vector added is compared with
# every centroid (below), which grows with the lists: adding 10M vectors to 16,384 lists took
# 618.8 s on 2 threads, against 360.6 s through a graph over 12,649 (bench/big_search.py);
# in bfloat16 where the CPU runs it (placing.py), 2.3x less CPU than that float32 scan.
LISTS_PER_SQRT = 16.0
MIN_LISTS = 8
MAX_LISTS = 16_384
TRAIN_PER_LIST = 40
MIN_TRAIN_PER_LIST = 20
MAX_TRAIN = 262_144
# From this many lists they are trained two-level (kmeans.two_level: sqrt(lists) clusters, each
# split, then kmeans.REFINE_ITERATIONS over every list) instead of by ten flat iterations (1M
# into 16,000 lists: 37.5 s against 129.9 s, nearly as good a search; docs/BENCHMARKS.md
# "Cheaper ways to 4x the lists").
TWO_LEVEL_MIN_LISTS = 2_048
# The coarse quantizer is flat (every centroid scanned, exact) up to this many lists, an HNSW
# graph from it: none by default. Earlier versions used a graph from 8,192 lists, to spare
# adds a scan of every centroid, but on embedding-like data (one cone, high intrinsic
# dimension) the walk finds a vector's nearest centroid for only 29-36% of vectors
# (efSearch 8-16; 64% at 256, 9x the cost; bench/add_cost.py), so adds fill the wrong lists:
# at 1M x 16,000 (bench/ivf_reach.py --coarse graph / flat) the lists' imbalance was 92
# against 3.4 and a search scanned 73% of the codes for recall 0.977 (13.8 ms) against 11%
# (3.2 ms); at 10M, imbalance 26.8 (12,649 lists, graph) against 6.9 (16,384, flat). A base
# built so by an earlier version is searched (its adds walk the graph) until the worker has
# retrained it (needs_training); tests lower this to keep that path working. A graph is
# searched with efSearch = max(HNSW_MIN_EF, HNSW_EF_PER_PROBE * nprobe).
HNSW_MIN_LISTS = 1 << 30
HNSW_MIN_EF = 64
HNSW_EF_PER_PROBE = 2
# ... and the efSearch that adding (encoding) uses: which list each vector goes to. FAISS's
# default is 16; bench/add_cost.py (10M's factory, 200k rows): 61 -> 41 us a row at 8, the
# same recall@10 from 128 lists probed up (0.9265 / 0.99 / 0.992 at 128 / 512 / 1011; an
# HNSW quantizer is used from 8,192 lists, where the tuning probes hundreds). (More is not
# better: at 256, 570 us a row, and recall at 32-512 lists lower: the queries' lists are
# found by the same approximate graph.)
HNSW_ADD_EF = 8
# From this many lists, where the CPU has no AMX, a row's list is found through a tree of the
# centres (index/tree.py: ~sqrt(lists) groups, the members of the best 16 compared in float32)
# instead of comparing it with every centre (assigning.Centres, bfloat16; FAISS's float32 scan
# where the CPU has no bfloat16): at 16,384 lists on two Zen 4 cores (AVX512-BF16, no AMX)
# a whole add 84 CPU-us a row against 140 (bench/placing.py --methods), the same list as
# FAISS's float32 scan for 99.7% of rows, the same recall.
# With AMX the bfloat16 product stays: on an Intel Xeon with AMX the tree's whole add took 52.6
# CPU-us a row in process against 58.4, but in the daemon (its many torch calls beside the
# import's other threads) a 2M-row import ran 11,046-11,151 rows/s against 11,656-11,866 by
# the product (docs/BENCHMARKS.md "Requests before bulk work"). Under 4,096 lists the tree
# compares a quarter of the centres or more (16 of ~64 groups): not worth its second pass (an
# estimate from the flops, not measured). From it too, a tree is used only where it compares
# few centres (tree.CentreTree.worth; assigning.assigner): bench/scale.py's 1M clustered 1280-d
# lists crowd into a few big groups, and rows compared with 98% of the centres through them.
TREE_FROM = 4_096
# Retrain when the library has grown this many times over the count the index was trained on.
RETRAIN_GROWTH = 4.0
# Tune nprobe and re-scoring again (at a compaction, not while a bulk import holds them) when
# the base has grown this many times over the count they were tuned on: an index trained early
# for an import's final size (train_at) was tuned on the rows it held then.
RETUNE_GROWTH = 2.0
# Recent adds live in an exact in-memory segment; fold them (and deletions) into a new base
# once the segment holds DELTA_MAX vectors or deletions reach TOMBSTONE_FRACTION of the base.
# The segment may also grow to DELTA_FRACTION of the base (at most DELTA_CAP vectors): each
# compaction rewrites the whole base, so a fixed DELTA_MAX made a big import O(n^2) in I/O;
# growing with the base makes it O(n) overall (the base grows by a quarter per rewrite).
DELTA_MAX = 20_000
DELTA_FRACTION = 0.25
DELTA_CAP = 250_000
# An IVF base's recent segment is coded (an empty copy of the base: the same quantizer and
# codebooks; segments.py): a vector costs dim / 8 bytes instead of 4 * dim, a search scans it
# like the base, and compaction moves its codes without re-encoding them. A bulk import may
# let it grow CODED_SCALE times as far as an exact one before the worker folds it in (a big
# import rewrites the base 4x less often). Outside imports the limits above still hold: every
# start-up re-reads the recent rows from SQLite and encodes them again.
CODED_SCALE = 4
# While a bulk import runs, compaction waits for it to end (rows stay searchable batch by batch
# through the recent segment) unless the segment outgrows this (float32 codes: 400 MB at
# 512-d); the import itself waits past twice this, past this while a training runs (its rows
# would be held twice: LibraryIndex.make_room; bench/import_rate.py at 1280-d: peak RSS 7.0 ->
# 4.8 GB). An import that grows the library trains the index once, for its final size
# (Policy.train_at), as soon as the library holds that index's training sample, and compacts
# when it ends.
HELD_DELTA_MAX = 200_000
# ... and a coded one, during a hold, also up to HELD_GROWTH times the base: every compaction
# rewrites the whole base, so a fixed bound (800k codes) made a 10M import rewrite it a dozen
# times, O(n^2) in I/O and CPU; growing with the base (by half at each rewrite) makes it O(n).
# Codes cost the same memory in the recent segment as in the base. A crash mid-import leaves
# up to that many rows to replay at the next start (as codes beyond HELD_DELTA_MAX: see
# LibraryIndex._open).
HELD_GROWTH = 0.5
# When an import ends, its recent rows are folded into a new base if they (and deletions) are at
# least this many: a restart then replays nothing. Fewer replay in ~0.1 s (~100k rows/s), not
# worth rewriting the whole base (1.3 GB at 10M) after every small import.
SETTLE_MIN = 10_000
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
# A training while a bulk import runs tunes on this many (a provisional tuning: it serves the
# import's own searches, and the import's end tunes again with TUNE_QUERIES, the library then
# several times the sample it trained on). After the k-means, the build's adds and tuning took
# 21.1 of the first training's 46.4 s at 1M, 12.2 s on 50 queries (the import 1.09x quicker,
# bench/scale.py, docs/BENCHMARKS.md); the recall it measures is 4x noisier.
HELD_TUNE_QUERIES = 50
# The tuning queries are stored vectors (each one's own id left out); users' queries are new
# images, which scored lower with earlier codes: ~0.006 at 200k (bench/search_path.py),
# 0.011-0.023 at 10M over nprobe 1051-512 (bench/big_search.py). With today's codes (since
# 2026-12-06) new photos scored within 0.0045 under the stored vectors or above them at every
# size and kind measured (bench/search_profile.py --truth, docs/BENCHMARKS.md): 10M clustered
# 0.0005-0.0015 under, 1M clustered 0.0035 under to 0.0045 above, 10M spectral 0.0005 under
# to 0.007 above. Aim this much above the target where that can be had (the tuning's own
# recall, of 2,000 neighbours, has a standard error of ~0.0035): 0.02 until 2026-12-07, when
# FAISS's part of a 10M search took 1.14x (clustered) to 1.3x (spectral) as long.
TUNE_MARGIN = 0.01
# ... and a larger share of the misses at lower targets (--recall): at 10M (clustered) a tuning
# for 0.92 on stored vectors gave new photos 0.8945 (bench/search_profile.py --recall 0.9).
TUNE_MARGIN_SHARE = 0.3

# The smallest nprobe is bisected to within 1/TUNE_PRECISION of itself (each step searches the
# tuning queries once: at 10M ~30 s of the worker's time a step, past nprobe 1000).
TUNE_PRECISION = 32
# ... after doubling from lists / TUNE_START_SHARE (from 1 before: at 16,384 lists the searches
# at nprobe 1-32 were six of a build's 28 and never enough, each re-scoring as many rows from
# the store as the others; bench/scale.py tunes 16,384 lists at nprobe 750-1,350). Where the
# start is enough already, the bisection goes below it.
TUNE_START_SHARE = 256
# The rows a tuning reads from the store to re-score its searches are kept for its later
# searches (tuning.Fetched), up to this many bytes of float32 vectors (256k rows at 512-d).
TUNE_CACHE_BYTES = 512 << 20
# Quantized codes: RESCORE * k candidates are re-scored with exact vectors from the store; the
# tuning tries the deepest factor first and shallower ones only where they can be cheaper
# (tuning.choose), each with its smallest nprobe reaching TARGET_RECALL, and keeps the cheapest
# by a cost model: scanning one code costs 1, re-scoring one candidate (a SQLite row
# read, float16 -> float32, a dot product) RESCORE_COST codes. Measured at 10M: ~14 ns a
# fast-scan code on one thread (bench/scan_cost.py), ~6 us a row from the page cache and
# 60-170 us from the disk (bench/rescore_read.py; the database outgrows the page cache): 430
# for cached rows, and rows missed cost 10x more. (200 until 2026-12-05, measured on the
# codes of its day, ~0.07 us a code.)
RESCORE_FACTORS = (4, 10, 25)
RESCORE_COST = 500
# Tried as well when no factor above reaches the target with the margin at any nprobe: data
# that the codes rank poorly (uniform random vectors: 25 x k reached 0.97 only with 94% of the
# lists probed at 1M, docs/BENCHMARKS.md) is then re-scored deeper rather than scanned whole.
DEEP_RESCORE = 100
# A search restricted to at most this many allowed ids is answered exactly from the store.
ALLOWED_EXACT_MAX = 20_000
SEED = 1234


def tune_start(lists: int) -> int:
    """The nprobe from which a tuning doubles: a small share of the lists."""
    return max(1, lists // TUNE_START_SHARE)


def tune_margin(target: float) -> float:
    """How far above `target` the tuning aims where that can be had."""
    return max(TUNE_MARGIN, TUNE_MARGIN_SHARE * (1 - target))


def tuning_goal(target: float) -> float:
    """The recall@10 on stored vectors a tuning for `target` aims at: with its margin."""
    return min(1.0, target + tune_margin(target))


@dataclass(frozen=True)
class Spec:
    """An index to build: its kind and the FAISS index_factory string."""

    kind: str  # "exact", "ivf-flat" or "ivf-pqfs" (saved bases may be "ivf-sq8", "ivf-pq")
    factory: str
    lists: int = 0

    @property
    def quantized(self) -> bool:
        return self.kind in QUANTIZED


# Kinds whose codes are approximate: their hits are re-scored with exact vectors from the store.
# "ivf-sq8" and "ivf-pq" were built by earlier versions (still searched until retrained).
QUANTIZED = ("ivf-pqfs", "ivf-sq8", "ivf-pq")


@dataclass(frozen=True)
class Policy:
    """The thresholds in force (the module constants unless configured otherwise)."""

    mode: str = "auto"  # "auto" or "exact"
    exact_max: int = EXACT_MAX
    flat_max_bytes: int = FLAT_MAX_BYTES
    lists_per_sqrt: float = LISTS_PER_SQRT
    hnsw_min_lists: int = HNSW_MIN_LISTS
    two_level_min_lists: int = TWO_LEVEL_MIN_LISTS
    delta_max: int = DELTA_MAX
    delta_fraction: float = DELTA_FRACTION
    held_delta_max: int = HELD_DELTA_MAX
    held_growth: float = HELD_GROWTH
    settle_min: int = SETTLE_MIN
    tombstone_fraction: float = TOMBSTONE_FRACTION
    retrain_growth: float = RETRAIN_GROWTH
    retune_growth: float = RETUNE_GROWTH
    target_recall: float = TARGET_RECALL
    allowed_exact_max: int = ALLOWED_EXACT_MAX
    store_scan_max: int = STORE_SCAN_MAX
    # The lists' k-means scores in bfloat16 (kmeans.py): set where the CPU runs it natively
    # and embeddings are not held to fp32 (Config.index_policy).
    train_bf16: bool = False
    # Lists from which rows are assigned through a tree of the centres (TREE_FROM where the
    # CPU has no AMX: Config.index_policy); never by default.
    tree_from: int = NEVER
    # The lists trained on the sample less its mean, rows and queries probing them by L2
    # (kmeans.around; Config.index_centred, IMGSEARCH_INDEX_CENTRED=1). Off by default:
    # trained on the rows as they are, the lists of 1M clustered vectors were 3.14 times as
    # uneven as even ones (their biggest hold the rows nearest the mean, which most queries
    # probe) and centred ones 1.15, for 0.84x the search's FAISS time at the same recall
    # target; but at 3M clustered 1.23x (8,357 lists probed against 1,235), and on 1M
    # spectral vectors (real embeddings' spectrum) 1.45x (bench/scale.py --centred-lists
    # A/B, bench/centring.py; docs/BENCHMARKS.md).
    centred: bool = False

    @property
    def places(self) -> bool:
        """Whether imgsearch chooses the lists of added rows itself (placing.Placer) rather
        than FAISS's float32 scan of every centre."""
        return self.train_bf16 or self.tree_from < NEVER

    def spec(self, count: int, dim: int) -> Spec:
        """The index a library of `count` vectors should have."""
        if self.mode == "exact" or count <= self.exact_max:
            return Spec("exact", "IDMap2,Flat")
        lists = lists_for(count, self.lists_per_sqrt)
        coarse = f"IVF{lists}_HNSW32" if lists >= self.hnsw_min_lists else f"IVF{lists}"
        pq = _pq_subquantizers(dim, 2 if lists >= self.hnsw_min_lists else PQ_DIMS_PER_CODE)
        small = count * dim * 4 <= self.flat_max_bytes or count < PQ_MIN_COUNT
        if small or pq is None:  # (no PQ code fits a dimension without even divisors: Flat)
            return Spec("ivf-flat", f"{coarse},Flat", lists)
        if lists >= self.hnsw_min_lists:  # unrotated: see rotation.py on graphs
            return Spec("ivf-pqfs", f"{coarse},PQ{pq}x4fs", lists)
        return Spec("ivf-pqfs", f"{ROTATED}{coarse},PQ{pq}x4fs", lists)

    def delta_limit(self, base_count: int) -> int:
        """How many recent vectors a base of `base_count` carries before a compaction."""
        grown = min(DELTA_CAP, int(self.delta_fraction * base_count))
        return max(self.delta_max, grown)

    def train_at(self, target: int, dim: int) -> int:
        """How many rows a bulk import growing the library to `target` waits for before it
        trains the index for `target` (once): that index's training sample, or 0 (exact)."""
        spec = self.spec(target, dim)
        return train_size(spec.lists, target) if spec.lists else 0

    def held_limit(self, coded: bool = False, base_count: int = 0, sample: int = 0) -> int:
        """How many recent vectors a bulk import's hold lets pile up on a base of
        `base_count` before the worker folds them in anyway (memory, and each fold rewrites
        the base; twice this and the import waits). An exact segment holds at least `sample`
        (the training sample the import waits for, train_at): otherwise a 10M import trained
        at held_delta_max rows on fewer than the sample (200k rows for 12,649 lists)."""
        if not coded:
            return max(self.held_delta_max, sample)
        return max(self.held_delta_max * CODED_SCALE, int(self.held_growth * base_count))

    def needs_retune(
        self, kind: str, tuned_count: int, count: int, holds: int, provisional: bool = False
    ) -> bool:
        """Whether a compacted base of `count` vectors should be tuned again (never while a
        bulk import holds the index; bases that did not record their tuning size: never,
        unless their tuning was provisional)."""
        if kind == "exact" or holds:
            return False
        return provisional or (tuned_count > 0 and count >= self.retune_growth * tuned_count)

    def needs_training(
        self, current: str, trained_count: int, count: int, dim: int, factory: str = ""
    ) -> bool:
        """Whether the library outgrew the index it has (another kind, or grown several-fold),
        or the index's adds walk an HNSW graph where the policy's would scan every centre
        (`factory`: the current base's; a graph of earlier versions misplaced most vectors)."""
        wanted = self.spec(count, dim)
        if wanted.kind != current:
            return wanted.kind != "exact" or self.mode == "exact" or count <= self.exact_max // 2
        if current != "exact" and "_HNSW" in factory and "_HNSW" not in wanted.factory:
            return True
        return current != "exact" and count >= self.retrain_growth * max(1, trained_count)


def unrotated(spec: Spec, dim: int) -> Spec:
    """A rotated spec's lists with FAISS's fast-scan PQ on dim / 2 sub-quantizers of the
    vectors as they are (rotation.MIN_CODED_SHARE: residuals that vary too evenly for codes
    on their leading directions); any other spec as it is."""
    if not spec.factory.startswith(ROTATED):
        return spec
    coarse = spec.factory[len(ROTATED) :].split(",")[0]
    pq = _pq_subquantizers(dim, 2)
    if pq is None:  # (spec() gave Flat for such a dimension: not reached)
        return Spec("ivf-flat", f"{coarse},Flat", spec.lists)
    return Spec(spec.kind, f"{coarse},PQ{pq}x4fs", spec.lists)


def lists_for(count: int, per_sqrt: float = LISTS_PER_SQRT) -> int:
    wanted = round(per_sqrt * math.sqrt(count))
    trainable = max(MIN_LISTS, count // TRAIN_PER_LIST)
    return int(max(1, min(MAX_LISTS, wanted, trainable, count)))


def train_size(lists: int, count: int) -> int:
    """Training sample: TRAIN_PER_LIST a list, capped at MAX_TRAIN (but MIN_TRAIN_PER_LIST)."""
    return min(count, lists * TRAIN_PER_LIST, max(MAX_TRAIN, lists * MIN_TRAIN_PER_LIST))


def _pq_subquantizers(dim: int, per_code: int = PQ_DIMS_PER_CODE) -> int | None:
    """dim / per_code, rounded down to an even divisor of dim (fast-scan packs codes in pairs;
    PQ needs m | dim), down to a quarter of it; None where there is none (an odd dimension,
    or 2 x a prime: 514 had a code of 2 sub-quantizers, 101 one that FAISS refused, and
    each training failed again at every retry)."""
    for m in range(max(2, dim // per_code), max(1, dim // (4 * per_code)) - 1, -1):
        if m >= 2 and dim % m == 0 and m % 2 == 0:
            return m
    return None
