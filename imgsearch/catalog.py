"""The store and the index kept in step: every change goes to SQLite first, then to the index.

SQLite is the truth and its generation stamps are the change log: the index keeps an immutable
saved base and replays newer rows at start-up (imgsearch/index/), so nothing is serialised on
the request path and a crash loses nothing SQLite has. Exact vectors (re-scoring,
similarities, duplicates) always come from the store, never from a quantized index.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NotFound
from .index import LibraryIndex, Policy, Precoded, idsets
from .index.startup import rename_model
from .store import NewImage, Rows, Store, WriteResult

log = logging.getLogger(__name__)

INDEX_DIR = "index"
LEGACY_INDEX_FILE = "index.faiss"  # the single-file index of earlier versions
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


class StoreSource:
    """The store as the index reads it (build, replay, exact vectors)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def generation(self) -> int:
        return self.store.generation()

    def ids(self) -> np.ndarray:
        return self.store.ids()

    def count(self) -> int:
        return self.store.count()

    def deleted_since(self, generation: int) -> np.ndarray | None:
        return self.store.images.deleted_since(generation)

    def forget_deletions(self, generation: int) -> None:
        self.store.images.forget_deletions(generation)

    def chunks(self, since_generation: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for chunk in self.store.images.vectors(since_generation=since_generation):
            yield chunk.ids, chunk.vectors

    def vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        parts = list(self.store.images.vectors(ids=[int(i) for i in ids]))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.concatenate([p.ids for p in parts]), np.concatenate([p.vectors for p in parts])


def bound_model(data_dir: Path) -> tuple[str, int] | None:
    """The model id and dimension a data dir's vectors belong to (read-only), or None."""
    db = data_dir / DB_FILE
    if not db.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('model', 'dim')"))
    except sqlite3.Error as exc:
        log.debug("cannot read the model of %s: %s", db, exc)
        return None
    if "model" not in rows or "dim" not in rows:
        return None
    return str(rows["model"]), int(rows["dim"])


class Catalog:
    """Images known to the daemon: SQLite as the truth, the vector index as its mirror."""

    def __init__(
        self,
        data_dir: Path,
        model_id: str,
        dim: int,
        policy: Policy | None = None,
        aliases: Sequence[str] = (),
    ) -> None:
        """`aliases`: ids earlier versions gave these weights; a data dir bound to one is
        rebound to `model_id`, its saved index with it."""
        self.model_id = model_id
        self.dim = dim
        self.model_aliases = tuple(aliases)
        legacy = data_dir / LEGACY_INDEX_FILE
        for stray in (legacy, legacy.with_name(legacy.name + ".tmp")):
            if stray.exists():
                log.info("removing %s (replaced by %s/)", stray, INDEX_DIR)
                stray.unlink()
        self.store = Store(data_dir / DB_FILE, dim)
        self._mutate = threading.Lock()
        self._listeners: list[Listener] = []
        try:
            self._bind(data_dir / INDEX_DIR, aliases)
            self.index = LibraryIndex(
                data_dir / INDEX_DIR, StoreSource(self.store), model_id, dim, policy or Policy()
            )
            self.index.catch_up = self.catch_up
        except BaseException:
            self.store.close()
            raise

    def _bind(self, index_dir: Path, aliases: Sequence[str]) -> None:
        """Bind the data dir to the model (store/meta.py). A rebinding renames the saved index
        bases' model first, inside the binding's transaction: a crash between the two leaves
        bases of the new id, which the next start's rebinding keeps, never a rebound data dir
        whose bases a start would discard and train again."""

        def rename_bases(old: str) -> None:
            renamed = rename_model(index_dir, old, self.model_id)
            log.info("%d saved index base(s) renamed from %s to %s", renamed, old, self.model_id)

        old = self.store.meta.bind_model(self.model_id, self.dim, aliases, rename_bases)
        if old is not None:
            log.warning(
                "%s: the vectors of %s are now bound as %s (the same weights, named by their "
                "content or open_clip's spelling of the tag since this version)",
                self.store.path, old, self.model_id,
            )  # fmt: skip

    @property
    def index_origin(self) -> str:
        """How the index came up: new, loaded, replayed (loaded + newer rows) or rebuilt."""
        return self.index.origin

    # -- changes ------------------------------------------------------------------------------

    def put(self, items: Sequence[NewImage] | Rows, ahead: Precoded | None = None) -> WriteResult:
        """Write images (insert or replace by path); searchable when this returns.
        `ahead`: the index's encode() of these items' vectors, in order (made beforehand)."""
        rows = items if isinstance(items, Rows) else Rows.of(items)
        with self._writing():
            result = self.store.images.upsert(rows)
            ids, vectors = np.asarray(result.ids, dtype=np.int64), rows.vectors
            if len(idsets.unique(ids)) < len(ids):  # a path twice: its last row is stored
                last = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]
                ids, vectors, ahead = ids[last], vectors[last], None
            self._mirror(
                result.generation, lambda: self.index.add(ids, vectors, result.generation, ahead)
            )
            self._notify(result)
        return result

    def remove_tree(self, path: str) -> list[int]:
        """Remove a file, or every image under a folder; return the ids removed."""
        with self._writing():
            result = self._apply(self.store.images.remove_tree(path))
        return result.removed

    def remove_ids(self, ids: Sequence[int]) -> list[int]:
        """Remove these images; return the ids that were stored."""
        with self._writing():
            result = self._apply(self.store.images.remove_ids(ids))
        return result.removed

    def mark_missing(self, path: str) -> list[int]:
        """Take the images at or below `path` out of the index, kept in SQLite as missing."""
        with self._writing():
            ids = [f.id for f in self.store.images.files_under(path) if not f.missing]
            result = self._apply(self.store.images.set_missing(ids, True))
        return result.removed

    def drop_gone(
        self, checked: Mapping[int, str], gone: Callable[[str], bool], *, keep: bool
    ) -> list[int]:
        """Images a producer found gone (id -> the path it checked), checked again under the
        write lock: removed, or with `keep` marked missing; return the ids changed. One moved
        or re-indexed meanwhile (by a user's add: another path stored now, or `gone` says no
        now) stays as it is: checked off the lock, it would be lost."""
        with self._writing():
            now = self.store.images.paths(list(checked))
            ids = [i for i, at in now.items() if at.path == checked[i] and gone(at.path)]
            if not ids:
                return []
            images = self.store.images
            result = self._apply(images.set_missing(ids, True) if keep else images.remove_ids(ids))
        return result.removed

    def restore(self, ids: Sequence[int]) -> int:
        """Make missing images searchable again (their stored vectors, nothing re-embedded)."""
        with self._writing():
            result = self._apply(self.store.images.set_missing(ids, False))
        return len(result.ids)

    def move(self, image_id: int, path: str, size: int, mtime_ns: int) -> int | None:
        """Give an image a new path, keeping its vector; return the id it replaced there, if
        any. NotFound where `image_id` is not stored (removed meanwhile): nothing changed."""
        with self._writing():
            result = self._apply(self.store.images.move(image_id, path, size, mtime_ns))
        if not result.ids:
            raise NotFound(f"image {image_id} is not stored: not moved to {path}")
        return result.removed[0] if result.removed else None

    def _apply(self, result: WriteResult) -> WriteResult:
        """Mirror a store write in the index: drop `removed`, (re-)add `ids` from SQLite."""

        def mirror() -> None:
            if result.removed:
                self.index.remove(np.asarray(result.removed, dtype=np.int64), result.generation)
            for chunk in self.store.images.vectors(ids=result.ids) if result.ids else ():
                self.index.add(chunk.ids, chunk.vectors, result.generation)

        self._mirror(result.generation, mirror)
        self._notify(result)
        return result

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write at a time, the index caught up with SQLite first (catch_up)."""
        with self._mutate:
            self._catch_up()
            yield

    def _mirror(self, generation: int, update: Callable[[], None]) -> None:
        """Run `update`, the index's side of the committed write of `generation`. Where it
        fails (a full disk for the rows' fine codes) SQLite holds a write the index lacks: the
        index is told (no base it saves claims that write), the error goes on to the caller,
        and the next write, or the index's worker, applies it again from SQLite first."""
        try:
            update()
        except BaseException:
            self.index.lost(generation)
            raise
        self.index.applied(generation)  # (a compaction meanwhile claimed the one before)

    def catch_up(self) -> None:
        """The index brought up to SQLite where a write reached only SQLite (_mirror), unless
        a write is under way (it does it first); the index's worker calls this. Where it
        cannot be done yet (a full disk still) the error is logged and the worker tries again."""
        if not self._mutate.acquire(blocking=False):
            return
        try:
            self._catch_up()
        except Exception as exc:
            log.warning("the index is still behind the database: %s", exc)
        finally:
            self._mutate.release()

    def _catch_up(self) -> None:
        """As a start-up replays (callers hold _mutate): what was removed or marked missing
        since the lost write taken out, the rows written since added again, from SQLite."""
        since = self.index.lost_since()
        if since is None:
            return
        generation = self.store.generation()
        source = self.index.source
        gone = source.deleted_since(since - 1)
        if gone is None:  # (the log reaches back to every saved base's generation: not here)
            gone = np.setdiff1d(self.index.ids(), source.ids(), assume_unique=True)
        if len(gone):
            self.index.remove(gone, generation)
        for ids, vectors in source.chunks(since_generation=since - 1):
            self.index.add(ids, vectors, generation)
        self.index.applied(generation, repaired=True)
        log.info("the index caught up with the database from generation %d", since)

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

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The exact stored vector of each present id (from SQLite, never from the index)."""
        found: dict[int, np.ndarray] = {}
        for chunk in self.store.images.vectors(ids=list(ids)):
            found.update(zip(chunk.ids.tolist(), chunk.vectors, strict=True))
        return found

    def similarities(self, query: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Cosine similarity of the query to each present stored id (exact, from the store)."""
        return {i: float(v @ query) for i, v in self.vectors(ids).items()}

    # -- reads --------------------------------------------------------------------------------

    def nearest(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[Neighbour]]:
        """The k nearest stored images of each query, best first (among sorted `allowed` ids)."""
        if len(self.index) == 0 or (allowed is not None and not len(allowed)):
            return [[] for _ in range(len(queries))]
        sims, ids = self.index.search(queries, k, allowed)
        # present only: a file marked missing is in the index until its removal there follows
        paths = self.store.paths(sorted({int(i) for i in ids.ravel() if i >= 0}), present=True)
        return [
            [  # a row removed (or marked missing) since the search is not reported
                Neighbour(int(i), paths[i].path, paths[i].mtime_ns, float(s), paths[i].source)
                for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True)
                if i in paths
            ]
            for row_s, row_i in zip(sims, ids, strict=True)
        ]

    # -- persistence --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the index's background work and close the database (closed even if it fails)."""
        try:
            self.index.close()
        finally:
            self.store.close()
