"""Indexing: walk folders, skip unchanged files, decode ahead of the model, embed in batches.

One bad file never stops a run: each failure is recorded with its path and reason, and the
files around it are indexed. Batches are committed as they finish, so an interrupted run keeps
everything but the batch in flight, and running it again picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .catalog import Catalog
from .embedders import Embedder
from .errors import ImgSearchError, NotFound
from .images import decode, read_file
from .store import FileFacts, NewImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileError:
    """A file that could not be indexed; `status` is the HTTP status it would have alone."""

    image: str
    error: str
    status: int = 422


@dataclass
class AddReport:
    """What one add did; `errors` lists every file that could not be indexed, and why."""

    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[FileError] = field(default_factory=list)
    restored: int = 0  # unchanged files of a returned folder, searchable again (not in JSON)

    def fail(self, error: FileError) -> None:
        self.failed += 1
        self.errors.append(error)

    def as_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "skipped": self.skipped,
            "failed": self.failed,
            "errors": [
                {"image": e.image, "error": e.error, "status": e.status} for e in self.errors
            ],
        }


@dataclass(frozen=True)
class Prepared:
    """A decoded file, ready for the model."""

    facts: FileFacts
    tensor: Any


ProgressHook = Callable[[int, int], None]


class Ingester:
    """Adds files and folders to a catalog with one embedder; one run at a time."""

    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
        *,
        extensions: frozenset[str],
        allows: Callable[[Path], bool],
        batch_size: int,
        workers: int,
        max_file_bytes: int,
        max_pixels: int,
        show_progress: bool = True,
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.extensions = extensions
        self.allows = allows
        self.batch_size = batch_size
        self.workers = workers
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.show_progress = show_progress
        self._run_lock = threading.Lock()

    def add(
        self,
        target: Path,
        *,
        update: bool = False,
        stop: threading.Event | None = None,
        on_progress: ProgressHook | None = None,
        report: AddReport | None = None,
    ) -> AddReport:
        """Index a file or a whole tree (`target` absolute), filling `report` as it goes."""
        if not target.exists():
            raise NotFound(f"no such file or directory: {target}")
        report = AddReport() if report is None else report
        is_dir = target.is_dir()
        found = walk(target, self.extensions, report) if is_dir else iter([target.resolve()])
        files = []
        for path in found:
            if self.allows(path):
                files.append(path)
            else:  # e.g. a symlink inside an allowed folder pointing out of it
                report.fail(FileError(str(path), "outside the folders this daemon may read", 403))
        self.add_files(
            files,
            label=str(target),
            update=update,
            stop=stop,
            on_progress=on_progress,
            report=report,
            progress_bar=is_dir,
        )
        if not is_dir and report.errors:
            error = report.errors[0]
            raise ImgSearchError(f"{error.image}: {error.error}", error.status)
        return report

    def add_files(
        self,
        files: list[Path],
        *,
        label: str,
        update: bool = False,
        sources: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
        on_progress: ProgressHook | None = None,
        report: AddReport | None = None,
        progress_bar: bool = True,
    ) -> AddReport:
        """Index these files (absolute, resolved); `sources` maps a path to its URL."""
        report = AddReport() if report is None else report
        with self._run_lock:
            todo = self._changed(files, update, report)
            if on_progress is not None:
                on_progress(0, len(todo))
            # A console bar for folders; None lets tqdm hide it when stderr is not a terminal.
            hide = None if self.show_progress and progress_bar else True
            with tqdm(total=len(todo), desc=f"indexing {label}", unit="img", disable=hide) as bar:
                self._run(todo, report, stop, bar, on_progress, sources or {})
        return report

    def _changed(self, files: list[Path], update: bool, report: AddReport) -> list[Path]:
        """Drop files whose size and mtime match what is stored (unless `update`).

        An unchanged file stored as missing (its folder had vanished) is made searchable again
        from its stored vector."""
        if update:
            return files
        known = self.catalog.store.file_states([str(p) for p in files])
        todo = []
        returned = []
        for path in files:
            state = known.get(str(path))
            if state is not None:
                try:
                    st = path.stat()
                except OSError:
                    st = None
                if st is not None and (st.st_size, st.st_mtime_ns) == (state.size, state.mtime_ns):
                    report.skipped += 1
                    if state.missing:
                        returned.append(state.id)
                    continue
            todo.append(path)
        if returned:
            report.restored += self.catalog.restore(returned)
        return todo

    def _run(
        self,
        todo: list[Path],
        report: AddReport,
        stop: threading.Event | None,
        bar: tqdm,
        on_progress: ProgressHook | None,
        sources: Mapping[str, str],
    ) -> None:
        batch: list[Prepared] = []
        done = 0
        ahead = self.workers * 2 + self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[Future[Prepared | FileError]] = deque()
            paths = iter(todo)
            for path in islice(paths, ahead):
                pending.append(pool.submit(self._prepare, path, sources.get(str(path))))
            while pending:
                if stop is not None and stop.is_set():
                    for fut in pending:
                        fut.cancel()
                    break
                future = pending.popleft()
                for path in islice(paths, 1):
                    pending.append(pool.submit(self._prepare, path, sources.get(str(path))))
                prepared = future.result()
                if isinstance(prepared, FileError):
                    report.fail(prepared)
                else:
                    batch.append(prepared)
                if len(batch) >= self.batch_size or (not pending and batch):
                    self._commit(batch, report)
                    batch = []
                done += 1
                bar.update(1)
                if on_progress is not None:
                    on_progress(done, len(todo))
            if batch:  # stopped early: keep what was decoded
                self._commit(batch, report)

    def _prepare(self, path: Path, source: str | None = None) -> Prepared | FileError:
        """Read, hash, decode and preprocess one file (runs in a decode thread)."""
        try:
            data, st = read_file(path, self.max_file_bytes)
            decoded = decode(data, min_side=self.embedder.input_size, max_pixels=self.max_pixels)
            tensor = self.embedder.prepare(decoded.image)
        except ImgSearchError as exc:
            return FileError(str(path), exc.message, exc.status)
        except Exception as exc:  # one file must never stop the run
            log.exception("unexpected error while reading %s", path)
            return FileError(str(path), f"unexpected error: {exc}", 500)
        digest = hashlib.sha256(data).hexdigest()
        facts = FileFacts(
            str(path), st.st_size, st.st_mtime_ns, digest, decoded.width, decoded.height, source
        )
        return Prepared(facts, tensor)

    def _commit(self, batch: list[Prepared], report: AddReport) -> None:
        vectors = self.embedder.embed_prepared([p.tensor for p in batch])
        items = [NewImage(p.facts, vec) for p, vec in zip(batch, vectors, strict=True)]
        result = self.catalog.put(items)
        report.updated += len(result.updated)
        report.added += len(result.ids) - len(result.updated)


def walk(root: Path, extensions: frozenset[str], report: AddReport) -> Iterator[Path]:
    """Image files under `root`, resolved, sorted per folder; follows symlinks but not loops."""
    seen: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        report.fail(FileError(str(exc.filename), f"cannot list folder: {exc.strerror}", 403))

    emitted: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=on_error):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() not in extensions:
                continue
            try:
                path = (Path(folder) / name).resolve(strict=True)
            except (OSError, RuntimeError) as exc:
                report.fail(FileError(str(Path(folder) / name), f"cannot resolve path: {exc}", 404))
                continue
            if str(path) not in emitted:
                emitted.add(str(path))
                yield path
