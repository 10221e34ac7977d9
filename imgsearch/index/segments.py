"""The searchable state: an immutable base, deletions filtered at search time, recent adds.

Removing an id only sets its bit in a bitmap over the base's ids (O(1) an id, whatever the
library's size); the bitmap is an `IDSelectorBitmap` that FAISS applies inside the base search,
together with an optional allow-list, so `k` results still come back. New and changed vectors
go to a recent segment: for an IVF base an empty copy of it (the base's `template`: the same
coarse quantizer and codebooks, so an add costs one code, dim / 8 bytes with fast-scan PQ, it
is searched with the base's nprobe, and compaction moves its codes into the base with
`merge_from`, nothing re-encoded); for an exact base an exact one (IndexIDMap2 on IndexFlatIP).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import idsets
from .base import Base
from .coarse import Coarse, centre_norms, inner
from .codes import Encoded, Precoded, encoded, lone_scans, lone_view, merge_into
from .hits import merge
from .placing import Placer
from .rotation import rotated, transform_of
from .scans import hnsw, preassigned, probe, search_ivf, search_params, split_scan

# A logged change: (database generation, "add" or "remove", ids, and for an add its vectors,
# or its codes where they fit the segments it is replayed into: a compaction's, same template).
Change = tuple[int, str, np.ndarray, np.ndarray | Encoded | None]


class Segments:
    """Base + tombstones + recent segment. Writes hold `lock`; base searches need no lock."""

    def __init__(
        self, base: Base, lock: threading.Lock, coded: bool = True, placer: Placer | None = None
    ) -> None:
        """`coded`: a coded recent segment where the base has a template (else exact);
        `placer`: made for the base's template, to encode adds with (else FAISS does)."""
        import faiss

        self.base = base
        self.lock = lock
        self.placer = placer
        top = int(base.ids[-1]) if len(base.ids) else -1
        self.bitmap = np.zeros((top >> 3) + 1, dtype=np.uint8)
        self.dead = 0
        self.coded = coded and base.template is not None  # it holds codes, not vectors
        self.recent: Any = (
            faiss.clone_index(base.template)
            if self.coded
            else faiss.IndexIDMap2(faiss.IndexFlatIP(base.meta.dim))
        )
        # Which ids the recent segment holds (a bitmap, grown as ids grow): removing from it
        # scans the segment (O(its size)), so only ids that are there are removed.
        self.members = np.zeros(0, dtype=np.uint8)
        self.graph = hnsw(base.index)  # an HNSW coarse quantizer (efSearch follows nprobe)
        self.coarse = Coarse.of(base.index)  # its lists' centres as float16, for a split search
        self.norms = centre_norms(base.index)  # a centred base's (coarse.inner)
        self.transform = transform_of(base.index)  # a rotated base's (its queries rotated first)
        self.lone = lone_view(base.index)  # its lists, scanned for one query at a time
        lone_scans(self.recent)

    def carried(self, base: Base, placer: Placer | None) -> Segments:
        """Segments on `base`, this base's own codes tuned again or given new fine codes, that
        hold this one's deletions and recent rows (callers hold `lock`): what such a job swaps
        in. Fresh segments with the job's log replayed, as a training's or a compaction's
        swap makes them, would drop every change made before the job began: newer than the
        base's generation, but in no log (and the next compaction would save their loss)."""
        if len(base.ids) != len(self.base.ids):
            raise RuntimeError("carried onto a base of other rows")
        fresh = Segments(base, self.lock, self.coded, placer)
        fresh.bitmap, fresh.dead = self.bitmap, self.dead
        fresh.recent, fresh.members = self.recent, self.members
        return fresh

    def code_if_empty(self) -> None:
        """Make an empty exact recent segment a coded one (when the base has a template)."""
        import faiss

        if not self.coded and self.base.template is not None and not self.recent.ntotal:
            self.recent, self.coded = faiss.clone_index(self.base.template), True
            lone_scans(self.recent)

    def __len__(self) -> int:
        return len(self.base) - self.dead + int(self.recent.ntotal)

    # -- writes (callers hold `lock`, except for encode) -----------------------------------------

    def encode(self, ids: np.ndarray, vectors: np.ndarray) -> Encoded | None:
        """The costly part of adding to a coded recent segment (coarse assignment and codes),
        as a small index to hand to add(); needs no lock. None for an exact segment."""
        return encoded(self.base.template, ids, vectors, self.placer) if self.coded else None

    def precode(self, vectors: np.ndarray) -> Precoded | None:
        """encode() of float32 `vectors` not yet given ids, and their fine codes, done ahead
        (no lock: a bulk import encodes its next batch while it writes this one); None for
        an exact segment."""
        if not self.coded:
            return None
        template, fine = self.base.template, self.base.fine
        codes = encoded(template, np.arange(len(vectors), dtype=np.int64), vectors, self.placer)
        finer = fine.encode(vectors) if fine is not None else None
        return Precoded(template, codes, len(vectors), vectors, fine, finer)

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, codes: Encoded | None = None,
        fine_done: bool = False,
    ) -> None:  # fmt: skip
        """Add (or replace) `ids`; `codes`: what encode() made of them for this segment. Their
        fine codes, if the base has them, are written first (`fine_done`: already written;
        codes moved in without their vectors were written with the same fine codes)."""
        fine = self.base.fine
        if fine is not None and not fine_done and len(vectors) == len(ids):
            fine.put(ids, vectors)
        self.remove(ids)
        if self.coded:
            merge_into(self.recent, codes or encoded(self.base.template, ids, vectors, self.placer))
        else:
            self.recent.add_with_ids(vectors, ids)
        self._mark(ids, 1)

    def replay(self, changes: Sequence[Change], after: int) -> None:
        """Apply logged changes newer than generation `after`, in order."""
        for generation, _op, ids, data in changes:
            if generation <= after:
                continue
            if data is None:
                self.remove(ids)
            elif isinstance(data, Encoded):  # moved in as they are: nothing encoded again
                if not self.coded:
                    raise RuntimeError("codes logged for a segment that holds vectors")
                self.add(ids, np.zeros((0, self.base.meta.dim), np.float32), data)
            else:
                self.add(ids, data)

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        if not len(ids):
            return
        inside = ids[self.base.contains(ids)]
        if len(inside):
            byte, bit = inside >> 3, (inside & 7).astype(np.uint8)
            fresh = (self.bitmap[byte] >> bit) & 1 == 0
            self.dead += len(idsets.unique(inside[fresh]))
            np.bitwise_or.at(self.bitmap, byte, np.left_shift(1, bit).astype(np.uint8))
        there = idsets.unique(ids[self._in_recent(ids)])
        if len(there):
            self.recent.remove_ids(faiss.IDSelectorBatch(len(there), faiss.swig_ptr(there)))
            self._mark(there, 0)

    def _in_recent(self, ids: np.ndarray) -> np.ndarray:
        byte = ids >> 3
        inside = byte < len(self.members)
        found = np.zeros(len(ids), dtype=bool)
        found[inside] = (self.members[byte[inside]] >> (ids[inside] & 7).astype(np.uint8)) & 1 == 1
        return found

    def _mark(self, ids: np.ndarray, value: int) -> None:
        if not len(ids):
            return
        need = (int(ids.max()) >> 3) + 1
        if need > len(self.members):  # grown by half again: ids only grow
            grown = np.zeros(max(need, len(self.members) * 3 // 2), dtype=np.uint8)
            grown[: len(self.members)] = self.members
            self.members = grown
        byte, bit = ids >> 3, np.left_shift(1, (ids & 7).astype(np.uint8)).astype(np.uint8)
        if value:
            np.bitwise_or.at(self.members, byte, bit)
        else:
            np.bitwise_and.at(self.members, byte, ~bit)

    # -- reads ----------------------------------------------------------------------------------

    def deleted(self) -> np.ndarray:
        """Base ids filtered out by the bitmap (only base ids ever get a bit)."""
        return bits(self.bitmap)

    def recent_ids(self) -> np.ndarray:
        """Sorted ids in the recent segment."""
        return bits(self.members)

    def frozen(self) -> Any:
        """A copy of the recent segment for a compaction to fold into a new base (callers
        hold `lock`): for merge_into when coded, else (ids, vectors)."""
        import faiss

        if self.coded:
            return Encoded(faiss.clone_index(self.recent))
        n = int(self.recent.ntotal)
        ids = faiss.vector_to_array(self.recent.id_map).astype(np.int64)
        vectors = self.recent.index.reconstruct_n(0, n) if n else np.zeros((0, self.base.meta.dim))
        return ids, np.asarray(vectors, dtype=np.float32)

    def ids(self) -> np.ndarray:
        with self.lock:
            recent = self.recent_ids()
            alive = np.setdiff1d(self.base.ids, self.deleted(), assume_unique=True)
        return idsets.union(alive, recent)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        nprobe: int,
        helper: Executor | None = None,
        stages: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k of base and recent segment: (similarities, ids), -1 padded. With `helper`
        (a thread), an IVF base's probed lists are scanned half there, half here. `stages`
        receives the ms spent on the base, waiting for `lock` and on the recent segment."""
        import faiss

        start = time.perf_counter()

        keep: list[Any] = []  # SWIG selectors point into these: keep them alive
        allow: Any = None
        if allowed is not None:
            allow = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
            keep += [allowed, allow]
        sel: Any = allow
        if self.dead:
            gone = faiss.IDSelectorBitmap(len(self.bitmap), faiss.swig_ptr(self.bitmap))
            sel = faiss.IDSelectorNot(gone)
            keep += [self.bitmap, gone, sel]
            if allow is not None:
                sel = faiss.IDSelectorAnd(sel, allow)
                keep.append(sel)
        ivf = self.base.meta.kind != "exact" and self.base.index.ntotal
        # An IVF base's coarse assignment is made here (as FAISS's own search would make it,
        # but a centred base's similarities: coarse.inner). A coded recent segment has the
        # base's lists (its template's): the assignment serves it too, where FAISS's own
        # search would make it again (16,384 centres x 512: 1.4-2.7 ms on one thread; 4.5-5.1
        # ms at 16,000 x 1280: bench/coarse.py). A lone query's lists are scanned through the
        # lone view.
        assigned: Assigned | None = None
        if ivf:
            part, assigned = self._search_assigned(queries, k, sel, nprobe, helper)
            parts = [part]
        else:
            parts = [self._search_base(queries, k, sel, nprobe)]
        based = time.perf_counter()
        with self.lock:
            locked = time.perf_counter()
            parts[0] = self._current(parts[0])
            if self.recent.ntotal:
                kk = min(k, int(self.recent.ntotal))
                if assigned is not None and self.coded:
                    recent = faiss.extract_index_ivf(self.recent)
                    parts.append(preassigned(recent, *assigned.of(kk), allow))
                elif self.coded:  # (an IVF base that holds nothing)
                    parts.append(search_ivf(self.recent, queries, kk, nprobe, self.norms, allow))
                else:
                    params = search_params(False, allow, nprobe)
                    parts.append(self.recent.search(queries, kk, params=params))
        if stages is not None:
            end = time.perf_counter()
            stages.update(base=(based - start) * 1000, lock=(locked - based) * 1000)
            stages["recent"] = (end - locked) * 1000
        return merge(parts, k)

    def _current(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The base's hits less those removed since its scan began (callers hold `lock`): the
        scan runs off the lock, so an image changed meanwhile (its base row tombstoned, its
        new vector in the recent segment) came back twice, once with its old vector."""
        sims, ids = part
        ids = np.asarray(ids, np.int64)
        hit = (ids >= 0) & (ids < len(self.bitmap) * 8)
        # (not `self.dead`: segments a retuning's swap carried over share the live bitmap but
        # keep the count of their own day, and a search that began on them reads it here)
        if not hit.any():
            return sims, ids
        where = ids[hit]
        gone = np.zeros(ids.shape, dtype=bool)
        gone[hit] = (self.bitmap[where >> 3] >> (where & 7).astype(np.uint8)) & 1 == 1
        if not gone.any():
            return sims, ids
        return np.where(gone, -np.inf, sims), np.where(gone, -1, ids)

    def _search_base(
        self, queries: np.ndarray, k: int, sel: Any, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """An exact base's search (an IVF base's: _search_assigned)."""
        index = self.base.index
        if not index.ntotal:
            return np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0))
        params = search_params(False, sel, nprobe)
        sims, ids = index.search(queries, min(k, int(index.ntotal)), params=params)
        return sims, ids

    def _lone(self, queries: np.ndarray) -> Any | None:
        """The base's lone view where `queries` is one query (codes.lone_view), else None."""
        return self.lone if len(queries) == 1 else None

    def _search_assigned(
        self, queries: np.ndarray, k: int, sel: Any, nprobe: int, helper: Executor | None
    ) -> tuple[tuple[np.ndarray, np.ndarray], Assigned]:
        """The base search with the coarse assignment made here (over an HNSW quantizer's
        centroids by a flat scan from FLAT_COARSE_FROM lists), then with `helper` on two
        threads: every other probed list scanned there (FAISS releases the GIL), the rest
        here, the two best-k merged; the nearest lists alternate, so both halves do about
        the same work."""
        import faiss

        ivf = faiss.extract_index_ivf(self.base.index)
        nprobe = min(nprobe, ivf.nlist)
        queries = rotated(self.transform, queries)  # (a rotated index's own space)
        if helper is not None and self.coarse is not None:
            dist, lists = self.coarse.nearest(queries, nprobe, helper)
        else:
            dist, lists = probe(ivf, queries, nprobe, self.graph)
        dist = inner(queries, lists, dist, self.norms)
        kk = min(k, int(ivf.ntotal))
        assigned = Assigned(queries, lists, dist)
        scan = lone if (lone := self._lone(queries)) is not None else ivf
        return split_scan(scan, queries, kk, lists, dist, sel, helper), assigned


@dataclass(frozen=True)
class Assigned:
    """A search's coarse assignment: its queries (in a rotated index's space), each one's
    probed lists and their centres' similarities."""

    queries: np.ndarray
    lists: np.ndarray
    dist: np.ndarray

    def of(self, k: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """`preassigned`'s arguments from `queries` to `dist` for a best k."""
        return self.queries, k, self.lists, self.dist


def bits(bitmap: np.ndarray) -> np.ndarray:
    """The sorted ids whose bits are set in a bitmap (bit i & 7 of byte i >> 3)."""
    return np.flatnonzero(np.unpackbits(bitmap, bitorder="little")).astype(np.int64)
