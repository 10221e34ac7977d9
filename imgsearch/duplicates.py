"""Duplicates in the library: byte-identical files, and near copies confirmed by geometry.

Identical: present images that share a content hash (SHA-256 of the file bytes), one cluster
per hash. Near: every distinct content (an identical group takes part once, as its first path)
meets its nearest neighbours within the threshold (`neighbours.close_pairs`: exact up to 10k
images, a temporary IVF beyond). Candidate pairs are taken closest first; a pair already
joined through others is not checked again; the others must pass `verify`'s same-photo test
(one frame inside the other, same pixels once aligned and re-lit), which turns away burst shots
and other near-identical scenes. Confirmed pairs are joined (union-find); every cluster is a
tree of confirmed pairs. Without the verify comparator, every candidate pair is accepted.
The report types are in `duplicate_report`. No HTTP here.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .comparators import FeatureCache
from .comparators.verify import VerifyComparator, VerifyFeatures
from .duplicate_report import Cluster, Member, Report
from .errors import BadRequest, ImgSearchError
from .index import idsets
from .memory import available_mb
from .neighbours import close_pairs
from .store import ImageRow

log = logging.getLogger(__name__)

# Distance (1 - cosine, as in search results) below which two images are candidates. With the
# bundled efficientnet-lite0, edited copies of real photos (re-encoded, resized to 1/2, cropped
# by 5-10%, brightness or contrast changed) measured 0.0003-0.095 and different photos 0.66+;
# burst-like pairs 0.02-0.23, which only verification tells apart (bench/duplicates.py).
DEFAULT_THRESHOLD = 0.15
MAX_THRESHOLD = 2.0
BATCH = 32  # candidate pairs verified side by side
FEATURES_KEPT = 256  # verify features held in memory (about 0.2 MB each)
COMPACT_CHUNK = 16_384
# Memory a run takes an image: its vector as float32 (and a part more, the chunks being read
# beside it: bench-measured 1.2x), and its candidates (best 10 ids and similarities, pairs).
VECTOR_COPIES = 1.25
CANDIDATE_BYTES = 400


class Stopped(ImgSearchError):
    """A run abandoned: its client left, or the daemon is stopping."""

    status = 503


def check_threshold(value: float) -> float:
    """The threshold if it is a distance (0 to 2); BadRequest otherwise."""
    if not math.isfinite(value) or not 0.0 <= value <= MAX_THRESHOLD:
        raise BadRequest(f"threshold must be between 0 and {MAX_THRESHOLD:g}, got {value!r}")
    return float(value)


class DuplicateFinder:
    """Finds duplicate clusters; the last answer is kept until the library changes."""

    def __init__(
        self,
        catalog: Catalog,
        verify: VerifyComparator | None,
        features: FeatureCache,
        *,
        workers: int,
        max_file_bytes: int,
        max_pixels: int,
    ) -> None:
        self.catalog = catalog
        self.verify = verify
        self.features = features
        self.workers = workers
        self.limits = {"max_file_bytes": max_file_bytes, "max_pixels": max_pixels}
        self._lock = threading.Lock()  # one run at a time; a second waits, then reads the cache
        self._last: tuple[tuple[Any, ...], Report] | None = None
        self._interrupts = 0  # interrupt() calls so far: a run started before one stops

    def interrupt(self) -> None:
        """Stop the run in progress, if any (it raises Stopped): the daemon is stopping."""
        self._interrupts += 1

    def find(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        folder: str | None = None,
        allowed: np.ndarray | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Duplicate clusters among the present images (at or below `folder`, and among the
        sorted `allowed` ids when given: the /duplicates filters). Raises Stopped soon after
        `stop` is set (the client left) or the finder is closed (the daemon is stopping)."""
        threshold = check_threshold(threshold)
        among = None if allowed is None else hashlib.sha256(allowed.tobytes()).hexdigest()
        with self._lock:
            generation = self.catalog.store.generation()
            key = (generation, threshold, folder, among, self.verify is not None)
            if self._last is not None and self._last[0] == key:
                return dataclasses.replace(self._last[1], cached=True)
            report = self._find(threshold, folder, allowed, self._checker(stop))
            self._last = (key, report)
        return report

    def _checker(self, stop: threading.Event | None) -> Callable[[], None]:
        interrupts = self._interrupts

        def check() -> None:
            if self._interrupts != interrupts:
                raise Stopped("the duplicates run was stopped: the daemon is stopping")
            if stop is not None and stop.is_set():
                raise Stopped("the duplicates run was stopped: its request was closed")

        return check

    def _find(
        self,
        threshold: float,
        folder: str | None,
        allowed: np.ndarray | None,
        check: Callable[[], None],
    ) -> Report:
        start = time.perf_counter()
        check()
        groups = _by_hash(_among(self.catalog.store.images.shared_hashes(folder), allowed))
        ids, vectors = self._vectors(folder)
        if allowed is not None:
            ids, vectors = _compact(ids, vectors, idsets.within(ids, allowed))
        hidden = np.asarray([r.id for g in groups for r in g[1:]], dtype=np.int64)
        seen = len(ids)
        # An identical group meets its neighbours once.
        ids, vectors = _compact(ids, vectors, ~idsets.within(ids, hidden))
        pairs = close_pairs(vectors, threshold, check=check)
        edges = [
            (float(d), int(a), int(b))
            for a, b, d in zip(pairs.first, pairs.second, pairs.distance, strict=True)
        ]
        ends = sorted({row for _, a, b in edges for row in (a, b)})
        by_id = self.catalog.store.images.image_rows([int(ids[row]) for row in ends])
        rows = {row: by_id[int(ids[row])] for row in ends if int(ids[row]) in by_id}
        near = _Near(vectors, rows, {g[0].id: len(g) - 1 for g in groups})
        checked, unreadable = self._join(near, edges, check)
        identical = [
            Cluster("identical", tuple(Member(r.path, r.source) for r in g)) for g in groups
        ]
        clusters = sorted(identical, key=_order) + sorted(near.clusters(), key=_order)
        log.info(
            "duplicates: %d images, %d candidate pairs (%s), %d checked, %d clusters",
            seen, len(pairs), pairs.method, checked, len(clusters),
        )  # fmt: skip
        return Report(
            tuple(clusters),
            images=seen,
            threshold=threshold,
            verified=self.verify is not None,
            method=pairs.method,
            pairs=len(pairs),
            checked=checked,
            unreadable=unreadable,
            seconds=time.perf_counter() - start,
            folder=folder,
        )

    def _vectors(self, folder: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact ids and vectors of the present images (at or below `folder`), from the store."""
        store = self.catalog.store
        wanted = (
            None if folder is None else [f.id for f in store.files_under(folder) if not f.missing]
        )
        self._fits(store.count() if wanted is None else len(wanted))
        chunks = list(store.vectors(ids=wanted)) if wanted is None or wanted else []
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, self.catalog.dim), np.float32)
        ids = np.concatenate([c.ids for c in chunks])
        vectors = np.empty((len(ids), self.catalog.dim), np.float32)  # (pages taken as filled)
        row = 0
        chunks.reverse()
        while chunks:  # one copy: each chunk dropped once placed (kept, they were a second)
            chunk = chunks.pop()
            vectors[row : row + len(chunk.ids)] = chunk.vectors
            row += len(chunk.ids)
        return ids, vectors

    def _fits(self, images: int) -> None:
        """507 where the run's memory (its vectors as float32, once, and each image's best
        candidates) would not fit in what the system has free: the kernel's OOM killer would
        end the daemon instead, every request with it."""
        needed = images * (self.catalog.dim * 4 * VECTOR_COPIES + CANDIDATE_BYTES) / 1e6
        free = available_mb()
        if free is not None and needed > free:
            raise ImgSearchError(
                f"/duplicates over {images} images needs about {needed / 1e3:.1f} GB of memory "
                f"and {free / 1e3:.1f} GB is free: narrow it with folder= or where=",
                507,
            )

    def _join(
        self, near: _Near, edges: list[tuple[float, int, int]], check: Callable[[], None]
    ) -> tuple[int, int]:
        """Join confirmed pairs, closest first; return (pairs checked, unreadable images)."""
        edges = [e for e in edges if e[1] in near.rows and e[2] in near.rows]
        if self.verify is None:
            for distance, a, b in edges:
                near.join(a, b, distance, None)
            return 0, 0
        loader = _Loader(self.features, self.verify, near.rows, self.limits)
        checked = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="duplicates") as pool:
            for start in range(0, len(edges), BATCH):
                check()
                batch = [e for e in edges[start : start + BATCH] if near.apart(e[1], e[2])]
                results = list(pool.map(loader.check, batch))
                checked += sum(r is not None for r in results)
                for (distance, a, b), result in zip(batch, results, strict=True):
                    if result is not None and result[1]:
                        near.join(a, b, distance, result[0])
        return checked, len(loader.unreadable)


def _among(rows: list[ImageRow], allowed: np.ndarray | None) -> list[ImageRow]:
    """The rows whose id is allowed (all without a filter); groups then need two again."""
    if allowed is None:
        return rows
    keep = set(allowed.tolist())
    kept = [r for r in rows if r.id in keep]
    count = collections.Counter(r.sha256 for r in kept)
    return [r for r in kept if count[r.sha256] > 1]


class _Near:
    """Near clusters as they grow: union-find over row indexes, and the confirmed pairs."""

    def __init__(
        self, vectors: np.ndarray, rows: dict[int, ImageRow], copies: dict[int, int]
    ) -> None:
        self.vectors = vectors
        self.rows = rows  # what the store says of each row in a candidate pair
        self.copies = copies  # other byte-identical files, by store id
        self._parent: dict[int, int] = {}
        self._links: list[tuple[int, int, float, str | None]] = []

    def _root(self, node: int) -> int:
        parent = self._parent
        root = parent.setdefault(node, node)
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def apart(self, a: int, b: int) -> bool:
        return self._root(a) != self._root(b)

    def join(self, a: int, b: int, distance: float, verdict: str | None) -> None:
        if self.apart(a, b):
            self._parent[self._root(a)] = self._root(b)
            self._links.append((a, b, distance, verdict))

    def clusters(self) -> list[Cluster]:
        """One cluster per tree: its largest picture first, then outwards along the pairs."""
        links: dict[int, list[tuple[float, int, str | None]]] = {}
        for a, b, distance, verdict in self._links:
            links.setdefault(a, []).append((distance, b, verdict))
            links.setdefault(b, []).append((distance, a, verdict))
        trees: dict[int, list[int]] = {}
        for node in links:
            trees.setdefault(self._root(node), []).append(node)
        return [self._cluster(nodes, links) for nodes in trees.values()]

    def _cluster(
        self, nodes: list[int], links: dict[int, list[tuple[float, int, str | None]]]
    ) -> Cluster:
        first = min(nodes, key=lambda n: _keep_first(self.rows[n]))
        order, place = [first], {first: 0}
        members = [self._member(first, first, None, None)]
        for node in order:  # breadth first: a member's match is always listed before it
            for _, other, verdict in sorted(links[node], key=lambda x: (x[0], x[1])):
                if other not in place:
                    place[other] = len(order)
                    order.append(other)
                    members.append(self._member(other, first, place[node], verdict))
        return Cluster("near", tuple(members))

    def _member(self, node: int, first: int, match: int | None, verdict: str | None) -> Member:
        row = self.rows[node]
        similarity = float(self.vectors[node] @ self.vectors[first])
        distance = 0.0 if node == first else max(0.0, 1.0 - similarity)
        copies = self.copies.get(row.id, 0)
        return Member(row.path, row.source, distance, match, verdict, copies)


class _Loader:
    """Verify features of stored images for worker threads: a small LRU over the disk cache.

    Not folded into the derived-file cache: it lives for one run over one snapshot of rows (so
    it cannot go stale) and saves unpickling a node's features again for each of its pairs."""

    def __init__(
        self,
        cache: FeatureCache,
        verify: VerifyComparator,
        rows: dict[int, ImageRow],
        limits: dict[str, int],
    ) -> None:
        self.cache, self.verify, self.rows, self.limits = cache, verify, rows, limits
        self.unreadable: set[int] = set()
        self._kept: OrderedDict[int, VerifyFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, edge: tuple[float, int, int]) -> tuple[str, bool] | None:
        """verify's verdict and same-photo answer, larger picture as the query; None when
        either file cannot be read."""
        _, a, b = edge
        if _keep_first(self.rows[b]) < _keep_first(self.rows[a]):
            a, b = b, a
        first, second = self.features(a), self.features(b)
        if first is None or second is None:
            return None
        score, same = self.verify.same_photo(first, second)
        return str(score.extra["verdict"]), same

    def features(self, node: int) -> VerifyFeatures | None:
        with self._lock:
            if node in self.unreadable:
                return None
            if node in self._kept:
                self._kept.move_to_end(node)
                return self._kept[node]
        row = self.rows[node]
        found: VerifyFeatures | None
        try:
            [made] = self.cache.of_file([self.verify], row.id, Path(row.path), **self.limits)
            found = made if isinstance(made, VerifyFeatures) else None  # (not a FeatureError)
        except ImgSearchError as exc:
            log.info("duplicates: leaving out %s: %s", row.path, exc.message)
            found = None
        except Exception:  # one bad file must not fail the whole run
            log.exception("duplicates: reading %s failed", row.path)
            found = None
        with self._lock:
            if found is None:
                self.unreadable.add(node)
                return None
            self._kept[node] = found
            while len(self._kept) > FEATURES_KEPT:
                self._kept.popitem(last=False)
        return found


def _compact(
    ids: np.ndarray, vectors: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows, moved up in place (no second copy of all the vectors)."""
    rows = np.flatnonzero(keep)
    for start in range(0, len(rows), COMPACT_CHUNK):
        part = rows[start : start + COMPACT_CHUNK]
        vectors[start : start + len(part)] = vectors[part]  # part[i] >= start + i: read first
    return ids[rows], vectors[: len(rows)]


def _by_hash(rows: Sequence[ImageRow]) -> list[list[ImageRow]]:
    groups: dict[str, list[ImageRow]] = {}
    for row in rows:
        groups.setdefault(row.sha256, []).append(row)
    return list(groups.values())


def _keep_first(row: ImageRow) -> tuple[int, int, str]:
    """Sort key putting the copy worth keeping first: most pixels, then largest file, then path."""
    return (-row.width * row.height, -row.size, row.path)


def _order(cluster: Cluster) -> tuple[int, str]:
    return (-len(cluster.images), cluster.images[0].image)
