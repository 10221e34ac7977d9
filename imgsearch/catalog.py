"""The store and the index kept in step: every change goes to SQLite first, then to FAISS.

At start-up the saved index is verified against the database: used as is when its stamp matches,
caught up (changed rows re-added, deleted ids dropped) when it is behind, and rebuilt from SQLite
when it is missing, damaged or cannot be trusted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .index import TEMP_SUFFIX, IndexFileError, Stamp, VectorIndex
from .store import NewImage, Store, WriteResult

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
DB_FILE = "imgsearch.sqlite3"


@dataclass(frozen=True)
class Neighbour:
    id: int
    path: str
    mtime_ns: int
    similarity: float
    source: str | None = None


@dataclass(frozen=True)
class Change:
    """One committed write, as listeners see it.

    `written`: ids whose vector or row was inserted or replaced (a move, a restore included);
    `removed`: ids deleted, replaced by a move, or taken out as missing; `generation`: the
    store generation the write committed as.
    """

    written: tuple[int, ...]
    removed: tuple[int, ...]
    generation: int


Listener = Callable[[Change], None]


class Catalog:
    """Images known to the daemon: SQLite as the truth, FAISS as its searchable mirror."""

    def __init__(self, data_dir: Path, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self.index_path = data_dir / INDEX_FILE
        for stray in data_dir.glob("*" + TEMP_SUFFIX):
            log.warning("removing %s left by an interrupted save", stray)
            stray.unlink()
        self.store = Store(data_dir / DB_FILE)
        self._mutate = threading.Lock()
        self._listeners: list[Listener] = []
        try:
            self.store.meta.bind_model(model_id, dim)
            self.index, self.index_origin = self._open_index()
        except BaseException:
            self.store.close()
            raise
        self._applied = self.store.generation()
        self._saved = self._applied if self.index_origin == "loaded" else -1

    # -- start-up -----------------------------------------------------------------------------

    def _open_index(self) -> tuple[VectorIndex, str]:
        try:
            index, stamp = VectorIndex.load(self.index_path, self.model_id, self.dim)
        except IndexFileError as exc:
            if not self.index_path.exists() and self.store.count() == 0:
                log.info("new data directory: starting with an empty index")
                return VectorIndex(self.dim), "new"
            log.warning("index %s: %s; rebuilding from SQLite", self.index_path, exc)
            return self._rebuild(), "rebuilt"
        current = self.store.generation()
        if stamp.generation > current:
            log.warning("index %s is newer than the database; rebuilding", self.index_path)
            return self._rebuild(), "rebuilt"
        if stamp.generation < current:
            dropped, readded = self._catch_up(index, stamp)
            log.info(
                "index %s was behind the database (generation %d < %d): "
                "dropped %d deleted, re-added %d changed",
                self.index_path, stamp.generation, current, dropped, readded,
            )  # fmt: skip
            origin = "caught-up"
        else:
            origin = "loaded"
        if len(index) != self.store.count():
            log.warning("index %s disagrees with the database; rebuilding", self.index_path)
            return self._rebuild(), "rebuilt"
        log.info("index %s loaded: %d vectors", self.index_path, len(index))
        return index, origin

    def _catch_up(self, index: VectorIndex, stamp: Stamp) -> tuple[int, int]:
        gone = np.setdiff1d(index.ids(), self.store.ids(), assume_unique=True)
        dropped = index.remove(gone) if len(gone) else 0
        readded = 0
        for chunk in self.store.vectors(since_generation=stamp.generation):
            index.add(chunk.ids, chunk.vectors, replace=True)
            readded += len(chunk.ids)
        return dropped, readded

    def _rebuild(self) -> VectorIndex:
        index = VectorIndex(self.dim)
        for chunk in self.store.vectors():
            index.add(chunk.ids, chunk.vectors)
        log.info("index rebuilt from SQLite: %d vectors", len(index))
        return index

    # -- changes ------------------------------------------------------------------------------

    def put(self, items: Sequence[NewImage]) -> WriteResult:
        """Write images (insert or replace by path); searchable when this returns."""
        with self._mutate:
            result = self.store.images.upsert(items)
            vectors = np.stack([item.vector for item in items])
            self.index.add(np.asarray(result.ids, dtype=np.int64), vectors, replace=True)
            self._applied = result.generation
            self._notify(result)
        return result

    def remove_tree(self, path: str) -> list[int]:
        """Remove a file, or every image under a folder; return the ids removed."""
        with self._mutate:
            result = self._apply(self.store.images.remove_tree(path))
        return result.removed

    def remove_ids(self, ids: Sequence[int]) -> list[int]:
        """Remove these images; return the ids that were stored."""
        with self._mutate:
            result = self._apply(self.store.images.remove_ids(ids))
        return result.removed

    def mark_missing(self, path: str) -> list[int]:
        """Take the images at or below `path` out of the index, kept in SQLite as missing."""
        with self._mutate:
            ids = [f.id for f in self.store.images.files_under(path) if not f.missing]
            result = self._apply(self.store.images.set_missing(ids, True))
        return result.removed

    def restore(self, ids: Sequence[int]) -> int:
        """Make missing images searchable again (their stored vectors, nothing re-embedded)."""
        with self._mutate:
            result = self._apply(self.store.images.set_missing(ids, False))
        return len(result.ids)

    def move(self, image_id: int, path: str, size: int, mtime_ns: int) -> int | None:
        """Give an image a new path, keeping its vector; return the id it replaced there, if any."""
        with self._mutate:
            result = self._apply(self.store.images.move(image_id, path, size, mtime_ns))
        return result.removed[0] if result.removed else None

    def _apply(self, result: WriteResult) -> WriteResult:
        """Mirror a store write in the index: drop `removed`, (re-)add `ids` from SQLite."""
        if result.removed:
            self.index.remove(np.asarray(result.removed, dtype=np.int64))
        for chunk in self.store.images.vectors(ids=result.ids) if result.ids else ():
            self.index.add(chunk.ids, chunk.vectors, replace=True)
        self._applied = result.generation
        self._notify(result)
        return result

    # -- listeners ----------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with a Change after each committed write that changed something.

        Listeners run on the writing thread, in commit order, while writes wait: they must be
        quick (unlink a file, queue work) and must not write to the catalog themselves.
        """
        self._listeners.append(listener)

    def _notify(self, result: WriteResult) -> None:
        if not result.changed:
            return
        change = Change(tuple(result.ids), tuple(result.removed), result.generation)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # a listener's failure never undoes a committed write
                log.exception("catalog listener %r failed on %s", listener, change)

    def similarities(self, query: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Cosine similarity of the query to each stored id still in the index."""
        vectors = self.index.vectors(ids)
        return {i: float(v @ query) for i, v in vectors.items()}

    # -- reads --------------------------------------------------------------------------------

    def nearest(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[Neighbour]]:
        """The k nearest stored images of each query, best first (among sorted `allowed` ids)."""
        if len(self.index) == 0 or (allowed is not None and not len(allowed)):
            return [[] for _ in range(len(queries))]
        sims, ids = self.index.search(queries, k, allowed)
        paths = self.store.paths(sorted({int(i) for i in ids.ravel() if i >= 0}))
        return [
            [  # a row removed since the search is not reported
                Neighbour(int(i), paths[i].path, paths[i].mtime_ns, float(s), paths[i].source)
                for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True)
                if i in paths
            ]
            for row_s, row_i in zip(sims, ids, strict=True)
        ]

    # -- persistence --------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._saved != self._applied

    def save(self) -> bool:
        """Save the index if it changed since the last save; return whether it wrote."""
        with self._mutate:
            if not self.dirty:
                return False
            generation = self._applied
            stamp = Stamp(self.model_id, self.dim, generation, len(self.index))
            self.index.save(self.index_path, stamp)
            self._saved = generation
        log.debug("index saved: %d vectors, generation %d", stamp.count, generation)
        return True

    def close(self) -> None:
        """Save the index and close the database (closed even when the save fails)."""
        try:
            self.save()
        finally:
            self.store.close()
