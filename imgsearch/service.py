"""The daemon's working parts, opened once at start-up and closed once at shutdown."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .bulk.exports import ExportManager
from .bulk.imports import ImportManager
from .catalog import DB_FILE, Catalog, Change, bound_model
from .comparators import ComparatorRegistry, FeatureCache
from .comparators.verify import VerifyComparator
from .config import Config
from .cpu import lowest_priority
from .derived import DerivedFiles
from .downloads import DOWNLOADS, UrlAdder
from .downloads import sweep as sweep_downloads
from .duplicates import DuplicateFinder
from .embedders import (
    Embedder,
    PrecisionCheck,
    batch_size_of,
    check_precision,
    decode_workers,
    load_embedder,
    model_aliases,
    runtime_stats,
)
from .embedders.choice import ModelChoice, choose_model
from .errors import ConfigError
from .fetch import Downloader
from .images import enable_heif, image_extensions
from .ingest import Ingester
from .jobs import JobManager
from .precompute import FeaturePrecompute
from .search import Searcher
from .security import PathPolicy
from .store.warming import DatabaseWarmer
from .thumbnails import ThumbnailCache
from .watch import Watcher

log = logging.getLogger(__name__)

LOCK_FILE = "imgsearch.lock"
DERIVED = "cache"  # features and thumbnails (derived.py)


class DataDirLock:
    """An exclusive OS lock on the data directory (made if missing); released by the kernel if
    the process dies."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only, another user's: the daemon writes here, say so
            raise ConfigError(
                f"the data directory {data_dir} cannot be written ({exc.strerror}): imgsearch "
                "keeps its database and index there; pass a writable --data-dir"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise ConfigError(
                f"another imgsearch daemon (pid {holder}) is using {data_dir}; "
                "stop it or pass another --data-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


class Service:
    """Embedder, catalog, ingester and searcher for one data directory."""

    def __init__(
        self, config: Config, embedder: Embedder | None = None, *, model_fallback: bool = False
    ) -> None:
        """`model_fallback`: no model was asked for explicitly, so a first run without network
        may use the bundled model (see embedders/choice.py)."""
        self.config = config
        self._closed = False
        self._model_fallback = model_fallback
        # Everything opened goes on the stack: a failure part-way unwinds what was opened
        # (the data-dir lock and the database included), and close() unwinds it all.
        with ExitStack() as stack:
            self._open_store(stack, embedder)
            self._open_parts(stack)
            self._stack = stack.pop_all()
        # A saved index's fine codes come into memory in the background once all is open (read
        # while the model loaded, they slowed /health by 2-4 s from a cold page cache), then
        # the database file into the page cache where it fits (store/warming.py).
        fine = self.catalog.index.warm()
        self.database_warm: DatabaseWarmer | None = None
        if config.warm_database != "off":
            slow = self.catalog.index.slow_reads if config.warm_database == "auto" else None
            self.database_warm = DatabaseWarmer(config.data_dir / DB_FILE, slow=slow)
            self._stack.callback(self.database_warm.close)  # (first: the stack unwinds backwards)
            self.database_warm.start(after=fine)

    def _open_store(self, stack: ExitStack, embedder: Embedder | None) -> None:
        """The data-dir lock, the embedder and the catalog (SQLite + index)."""
        config = self.config
        # Downloaded images stay readable (thumbnails, search by path) whatever the roots.
        roots = config.allow_roots
        self.paths = PathPolicy((*roots, config.data_dir / DOWNLOADS) if roots else ())
        self._lock = DataDirLock(config.data_dir)
        stack.callback(self._lock.release)
        self.heif = enable_heif()
        choice = (
            ModelChoice(config)
            if embedder is not None
            else choose_model(config, fallback=self._model_fallback)
        )
        self.notice = choice.notice  # why the model is not the one asked for, if it is not
        self.precision_check: PrecisionCheck | None = None
        if embedder is not None:
            self.embedder = embedder
            self.catalog = self._catalog(None)
        else:
            # Loading the model (torch, open_clip: seconds) and opening the index (reading
            # its base, replaying SQLite) overlap: the catalog opens on a thread for the
            # model the data dir is bound to, checked against the model once it is loaded.
            with ThreadPoolExecutor(1, thread_name_prefix="open-catalog") as pool:
                early = self._open_early(pool)
                try:
                    started = time.monotonic()
                    self.embedder = load_embedder(choice.config, check_later=True)
                    log.info("model loaded in %.1fs", time.monotonic() - started)
                except BaseException:
                    if early is not None:
                        early.add_done_callback(_close)
                    raise
                # The precision self-check (seconds) runs while the index opens and the
                # daemon answers; image embeddings wait for it, nothing else does.
                self.precision_check = check_precision(self.embedder, choice.config.precision)
                if self.precision_check is not None:
                    stack.callback(self.precision_check.wait)
                self.catalog = self._catalog(early)
        stack.callback(self.catalog.close)  # stops the index's background work, closes the db
        batch = config.batch_size or batch_size_of(self.embedder)  # 0: the measured size
        self.config = dataclasses.replace(config, batch_size=batch)

    def _open_early(self, pool: ThreadPoolExecutor) -> Future[Catalog] | None:
        """The catalog of a data dir already bound to a model, opening (None for a new one)."""
        bound = bound_model(self.config.data_dir)
        if bound is None:
            return None
        model_id, dim = bound
        return pool.submit(Catalog, self.config.data_dir, model_id, dim, self.config.index_policy())

    def _catalog(self, early: Future[Catalog] | None) -> Catalog:
        """The catalog for the loaded model: the early one if it is the model it was opened for
        (else it is closed, and opening for the loaded model refuses the mismatch)."""
        if early is not None:
            catalog = early.result()
            if (catalog.model_id, catalog.dim) == (self.embedder.model_id, self.embedder.dim):
                # (opened before the model was known: what earlier versions called it, which
                # an import of their shards asks, is known now)
                catalog.model_aliases = model_aliases(self.embedder)
                return catalog
            catalog.close()
        return Catalog(
            self.config.data_dir,
            self.embedder.model_id,
            self.embedder.dim,
            self.config.index_policy(),
            model_aliases(self.embedder),
        )

    def _open_parts(self, stack: ExitStack) -> None:
        """Caches, ingest, search, duplicates, jobs and the watcher, in that order."""
        config = self.config
        limits: dict[str, Any] = {
            "max_file_bytes": config.max_upload_bytes,
            "max_pixels": config.max_image_pixels,
        }
        _drop_old_caches(config.data_dir)
        self.derived = DerivedFiles(config.data_dir / DERIVED, alive=self._stored)
        self.catalog.subscribe(self._invalidate)
        self.downloader = Downloader(
            timeout=config.download_timeout,
            concurrency=config.download_concurrency,
            max_bytes=config.max_upload_bytes,
            max_pixels=config.max_image_pixels,
        )
        self._sweep(stack)
        self.features = FeatureCache(self.derived, allows=self.paths.allows)
        self.thumbnails = ThumbnailCache(self.derived, **limits)
        extensions = image_extensions(self.heif)
        self.ingester = Ingester(
            self.catalog,
            self.embedder,
            extensions=extensions,
            allows=self.paths.allows,
            allows_text=self.paths.allows_text,
            batch_size=config.batch_size,
            workers=decode_workers(self.embedder, config.workers),
            **limits,
        )
        self.comparators = ComparatorRegistry.from_entry_points()
        self.searcher = Searcher(
            self.catalog, self.embedder, self.features, workers=config.workers, **limits
        )
        self.precompute = FeaturePrecompute(
            self.catalog,
            self.features,
            self.comparators,
            mode=config.precompute,
            limit=config.precompute_limit,
            paused=self.ingester.running,
            **limits,
        )
        stack.callback(self.precompute.close)  # before the catalog closes
        stack.callback(self.searcher.close)
        verify = self.comparators.get("verify") if "verify" in self.comparators else None
        self.duplicates = DuplicateFinder(
            self.catalog,
            verify if isinstance(verify, VerifyComparator) else None,
            self.features,
            workers=config.workers,
            **limits,
        )
        stack.callback(self.duplicates.interrupt)
        self.jobs = JobManager(
            self.ingester, self.catalog.store, config.max_pending_adds, self._url_adder()
        )
        stack.callback(self.jobs.close)
        self.imports = ImportManager(self.ingester, config.data_dir)
        stack.callback(self.imports.close)
        self.exports = ExportManager(self.catalog, config.data_dir)
        stack.callback(self.exports.close)
        self.watcher = Watcher(
            self.catalog,
            self.ingester,
            extensions=extensions,
            allows=self.paths.allows,
            ignore=config.data_dir,
        )
        stack.callback(self.watcher.close)
        self.watcher.start(config.watch)

    def _url_adder(self) -> UrlAdder:
        downloads = self.config.data_dir / DOWNLOADS
        return UrlAdder(self.downloader, self.ingester, downloads, self.config.batch_size)

    def remove(self, target: Path) -> int:
        """Forget a file, or every image under a folder (the files themselves are untouched)."""
        return len(self.catalog.remove_tree(str(target)))

    def _stored(self, image_id: int) -> bool:
        return image_id in self.catalog.store.paths([image_id])

    def _sweep(self, stack: ExitStack) -> None:
        """Derived files a kill -9 left (derived.py's sweep) and downloads no image holds
        (downloads.sweep), dropped on a background thread that takes only idle CPU; stopped
        (and waited for) before the catalog closes."""
        stop = threading.Event()
        opened = time.time()
        saved = self.downloader.note_saves()  # (before any add can save a download)

        def run() -> None:
            lowest_priority()
            try:
                self.derived.sweep(lambda ids: self.catalog.store.paths(ids).keys(), stop)
            except Exception:  # (a cache to tidy: never a reason to stop the daemon)
                log.exception("tidying the derived-file cache failed")
            try:
                downloads = self.config.data_dir / DOWNLOADS
                known = self.catalog.store.images.by_sha256
                sweep_downloads(
                    downloads, lambda digests: known(digests).keys(), opened, stop, saved
                )
            except Exception:
                log.exception("tidying the downloads folder failed")
            finally:
                self.downloader.stop_noting()

        thread = threading.Thread(target=run, name="derived-sweep", daemon=True)
        thread.start()
        stack.callback(thread.join)
        stack.callback(stop.set)  # (callbacks run last first: set, then join)

    def _invalidate(self, change: Change) -> None:
        """Derived files of removed images go with them (the catalog calls this)."""
        self.derived.invalidate(*change.removed)

    def stats(self) -> dict[str, Any]:
        """What /stats shows: read from memory only (counters, the index's description), so
        the route answers on the event loop, never waiting on SQLite or a worker thread."""
        return {
            "images": self.catalog.store.count(),
            "missing": self.catalog.store.missing(),
            "watched": self.watcher.count(),
            "model": self.embedder.model_id,
            "dim": self.embedder.dim,
            "embedding": runtime_stats(self.embedder),
            "precompute": self.precompute.stats(),
            "index": self.catalog.index.describe(),
            "database_warm": (
                self.database_warm.stats() if self.database_warm else {"state": "off"}
            ),
            "data_dir": str(self.config.data_dir),
            "disk_free_mb": _free_mb(self.config.data_dir),
            **({"notice": self.notice} if self.notice else {}),
        }

    def close(self) -> None:
        """Stop watching and indexing, save the index, release the data dir; once only."""
        if self._closed:
            return
        self._closed = True
        self._stack.close()


def _free_mb(data_dir: Path) -> float | None:
    """The free space of the data dir's disk in MB (statvfs: on the local disk SQLite's WAL
    needs, a call of a few microseconds); None where it cannot be read."""
    try:
        return round(shutil.disk_usage(data_dir).free / 1e6, 1)
    except OSError:
        return None


def _close(opened: Future[Catalog]) -> None:
    """Close a catalog opened ahead of a start-up that failed."""
    if not opened.cancelled() and opened.exception() is None:
        opened.result().close()


def _drop_old_caches(data_dir: Path) -> None:
    """Remove the caches of earlier versions (`features/`, `thumbnails/`): now under `cache/`."""
    for name in ("features", "thumbnails"):
        old = data_dir / name
        if old.is_dir():
            log.info("removing %s: derived files now live under %s", old, data_dir / DERIVED)
            shutil.rmtree(old, ignore_errors=True)
