"""The ingest core: every way an image arrives ends here, as a list of files or embedded rows.

It alone decides what changed (size and mtime against the store), restores unchanged images of
a returned folder, hashes each file once (while decoding it), follows moves (a new path whose
content is a stored image whose own path is gone keeps that row and its vector), embeds the
rest in batches and writes them. One bad item never stops a run: each failure is recorded with
its path and reason. Batches are committed as they finish, so an interrupted run keeps all but
the batch in flight, and running it again picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..catalog import Catalog
from ..embedders import Embedder, lanes_of, tail_batch_of
from ..errors import ImgSearchError, NotFound
from ..images import decode, read_file
from ..index import Precoded
from ..store import FileFacts, NewImage, Rows
from .checks import Checked, check_items, check_rows, refuse_outside
from .folders import files_to_add, is_file
from .report import AddReport, FileError

log = logging.getLogger(__name__)

ProgressHook = Callable[[int, int], None]
# A run waiting for another to end looks at its stop event this often.
STOP_CHECK_S = 0.2
# In the last batch per lane, each batch takes 1/TAIL_SPLIT of a lane's share of what is left.
TAIL_SPLIT = 2


@dataclass(frozen=True)
class Prepared:
    """A decoded file, ready for the model."""

    facts: FileFacts
    tensor: Any


class Ingester:
    """Adds files (and embedded rows) to a catalog with one embedder; one run at a time."""

    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
        *,
        extensions: frozenset[str],
        allows: Callable[[Path], bool],
        allows_text: Callable[[str], bool] | None = None,
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
        # Embedded rows' paths (normalised, absolute) as text: PathPolicy.allows_text, quick
        # enough for a bulk import's batches; by default `allows` on each (a Path a row).
        self.allows_text = allows_text or (lambda path: allows(Path(path)))
        self.batch_size = batch_size
        self.workers = workers
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.show_progress = show_progress
        self._run_lock = threading.Lock()

    def running(self) -> bool:
        """Whether a run (files or embedded rows) is in progress."""
        return self._run_lock.locked()

    def add(
        self,
        target: Path,
        *,
        update: bool = False,
        stop: threading.Event | None = None,
        on_progress: ProgressHook | None = None,
        report: AddReport | None = None,
    ) -> AddReport:
        """Index a file or a whole tree (`target` absolute); one file's failure raises."""
        if not target.exists():
            raise NotFound(f"no such file or directory: {target}")
        report = AddReport() if report is None else report
        is_dir = target.is_dir()
        files = files_to_add(target, self.extensions, self.allows, report)
        self.add_files(
            files,
            label=str(target),
            update=update,
            stop=stop,
            on_progress=on_progress,
            report=report,
            progress_bar=is_dir,
        )
        if not is_dir:
            report.raise_single()
        return report

    def add_files(
        self,
        files: Sequence[Path],
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
        if not self._acquire(stop):
            return report  # stopped while another run went on: nothing done
        try:
            stats = {str(p): _stat(p) for p in files}
            todo, new = self._triage(stats, update, report)
            if on_progress is not None:
                on_progress(0, len(todo))
            # A console bar for folders; None lets tqdm hide it when stderr is not a terminal.
            hide = None if self.show_progress and progress_bar else True
            with tqdm(total=len(todo), desc=f"indexing {label}", unit="img", disable=hide) as bar:
                run = _Run(self, report, new, sources or {}, stop, bar, on_progress)
                run.all([Path(p) for p in todo])
        finally:
            self._run_lock.release()
        return report

    def _acquire(self, stop: threading.Event | None) -> bool:
        """Take the run lock, or give up (False) once `stop` is set: an unwatch or a cancel
        must not wait for another job's whole run first."""
        while stop is not None and not stop.is_set():
            if self._run_lock.acquire(timeout=STOP_CHECK_S):
                return True
        return stop is None and self._run_lock.acquire()

    def check_embedded(self, rows: Rows | Sequence[NewImage], encode: bool = False) -> Checked:
        """Check rows ahead of add_embedded (a bulk import checks its next batch, as
        columns, while it writes this one); `encode`: the index encodes the good rows'
        vectors too (else encode_checked() may, later and on another thread). A file row
        the daemon may not read is refused (403): a stored path is read later (verify
        re-ranking, evidence, precomputed features), so a row must not name what /add may not."""
        dim = self.catalog.dim
        checked = check_rows(rows, dim) if isinstance(rows, Rows) else check_items(rows, dim)
        checked = refuse_outside(checked, self.allows_text)
        return self.encode_checked(checked) if encode else checked

    def encode_checked(self, checked: Checked) -> Checked:
        """`checked` with the index's codes of its good rows (what add_embedded then adds
        without encoding them again); unchanged where the index holds vectors, not codes."""
        if not checked.good:
            return checked
        ahead = self.catalog.index.encode(checked.rows.vectors)
        return Checked(checked.rows, checked.errors, ahead)

    def add_embedded(
        self,
        items: Rows | Sequence[NewImage] | Checked,
        *,
        update: bool = False,
        report: AddReport | None = None,
        batch_size: int | None = None,
    ) -> AddReport:
        """Write rows that are already embedded (e.g. imported); a row whose size and mtime
        match what is stored is skipped (unless `update`), a moved file keeps its row.
        `batch_size`: rows per transaction (default the embedding batch size)."""
        report = AddReport() if report is None else report
        size = batch_size or self.batch_size
        checked = items if isinstance(items, Checked) else self.check_embedded(items)
        for error in checked.errors:
            report.fail(error)
        rows = checked.rows
        last = dict(zip(rows.paths, range(len(rows)), strict=True))  # the last row of a path wins
        if len(last) != len(rows):
            rows = rows.take(sorted(last.values()))
            last = dict(zip(rows.paths, range(len(rows)), strict=True))
        with self._run_lock:
            stats = dict(zip(rows.paths, zip(rows.sizes, rows.mtimes, strict=True), strict=True))
            todo, new = self._triage(stats, update, report)
            # Codes made ahead fit only a write of every good row, in order, at once.
            whole = len(todo) == checked.good and len(todo) <= size
            ahead = checked.ahead if whole else None
            picks = range(len(rows)) if len(todo) == len(rows) else [last[p] for p in todo]
            for start in range(0, len(todo), size):
                self.write(rows.take(picks[start : start + size]), new, report, ahead)
        return report

    def _triage(
        self, stats: Mapping[str, tuple[int, int] | None], update: bool, report: AddReport
    ) -> tuple[list[str], set[str]]:
        """The paths to (re)index, and which of them the store does not know yet.

        A path whose size and mtime match what is stored is skipped (unless `update`); if it was
        stored as missing (its folder had vanished) it is searchable again from its vector."""
        known = self.catalog.store.file_states(list(stats))
        if not known:  # nothing stored yet (a new import's batch): every path is new
            return list(stats), set(stats)
        todo: list[str] = []
        returned: list[int] = []
        for path, stat in stats.items():
            state = known.get(path)
            if state is not None and not update and stat == (state.size, state.mtime_ns):
                report.skipped += 1
                if state.missing:
                    returned.append(state.id)
                continue
            todo.append(path)
        if returned:
            report.restored += self.catalog.restore(returned)
        return todo, {p for p in todo if p not in known}

    def prepare(self, path: Path, source: str | None = None) -> Prepared | FileError:
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

    def unmoved(self, batch: list[Prepared], new: set[str], report: AddReport) -> list[Prepared]:
        """The batch less the files that turned out to be moves (their rows follow them)."""
        moved = self._follow_moves([p.facts for p in batch if p.facts.path in new], report)
        return [p for p in batch if p.facts.path not in moved]

    def embed(self, batch: list[Prepared]) -> np.ndarray:
        """One bulk model call (in a lane: side by side with others only while no search
        waits)."""
        with lanes_of(self.embedder).bulk():
            return self.embedder.embed_prepared([p.tensor for p in batch])

    def write_embedded(self, batch: list[Prepared], vectors: np.ndarray, report: AddReport) -> None:
        """Write a batch with the vectors its model call returned (row i for file i)."""
        self.write(Rows.of_facts([p.facts for p in batch], vectors), set(), report)

    def write(
        self, rows: Rows, new: set[str], report: AddReport, ahead: Precoded | None = None
    ) -> None:
        """Write embedded rows: a new path holding a moved image takes over its row.
        `ahead`: the index's codes of exactly these rows (dropped if some were moves)."""
        # (a row without a known hash never holds a moved file: nothing to look up)
        candidates = [rows.facts(i) for i in rows.hashed() if rows.paths[i] in new]
        moved = self._follow_moves(candidates, report)
        kept = rows
        if moved:
            kept = rows.take([i for i, p in enumerate(rows.paths) if p not in moved])
        if len(kept):
            result = self.catalog.put(kept, ahead if len(kept) == len(rows) else None)
            report.updated += len(result.updated)
            report.added += len(result.ids) - len(result.updated)

    def _follow_moves(self, candidates: list[FileFacts], report: AddReport) -> set[str]:
        """New paths whose content is a stored image whose own path is gone: move those rows.
        Never for a download (a file with a `source`): the daemon's own copy of a URL's bytes
        is a new image with that source, not another image come back under a new name."""
        candidates = [f for f in candidates if f.source is None and f.path.startswith("/")]
        if not candidates:  # (a URL as a path: nothing tells whether it "went")
            return set()
        stored = self.catalog.store.images.by_sha256(sorted({f.sha256 for f in candidates}))
        moved: set[str] = set()
        for facts in candidates:
            for row in stored.get(facts.sha256, []):
                # Gone as the file system says: an unreadable folder (EACCES) is no move.
                if (
                    row.path.startswith("/")
                    and row.path != facts.path
                    and is_file(row.path) is False
                ):
                    try:
                        self.catalog.move(row.id, facts.path, facts.size, facts.mtime_ns)
                    except NotFound:  # removed meanwhile (a watch's prune): look further
                        continue
                    stored[facts.sha256].remove(row)
                    moved.add(facts.path)
                    report.moved += 1
                    log.info("moved %s -> %s (vector kept)", row.path, facts.path)
                    break
        return moved


class _Run:
    """One pass over files to embed: decode ahead of the model in a bounded pool, embed full
    batches in the embedder's lanes (side by side when the cores allow), write them in order
    as they finish, stop after the batches in flight when asked. The last files are shared
    between the lanes (`_target`): 8 files in one batch of 8 would leave every lane but one
    idle; for a model with a tail batch they go in shrinking batches, since a full last batch
    keeps one core busy alone after decoding has ended."""

    def __init__(
        self,
        ingester: Ingester,
        report: AddReport,
        new: set[str],
        sources: Mapping[str, str],
        stop: threading.Event | None,
        bar: tqdm,
        on_progress: ProgressHook | None,
    ) -> None:
        self.ingester, self.report, self.new, self.sources = ingester, report, new, sources
        self.stop, self.bar, self.on_progress = stop, bar, on_progress
        self.lanes = lanes_of(ingester.embedder).lanes
        self.embedding: deque[tuple[list[Prepared], Future[np.ndarray]]] = deque()
        self.floor = tail_batch_of(ingester.embedder)  # 0: no shrinking below an even share
        self.share: int | None = None  # an even share per lane of the last files, once reached

    def all(self, todo: list[Path]) -> None:
        ing = self.ingester
        batch: list[Prepared] = []
        # Enough decoded ahead to fill every lane's batch while the lanes run.
        ahead = ing.workers * 2 + ing.batch_size * self.lanes
        with (
            ThreadPoolExecutor(ing.workers, thread_name_prefix="decode") as pool,
            ThreadPoolExecutor(self.lanes, thread_name_prefix="embed") as model,
        ):
            pending: deque[Future[Prepared | FileError]] = deque()
            paths = iter(todo)

            def submit(count: int) -> None:
                for path in islice(paths, count):
                    pending.append(pool.submit(ing.prepare, path, self.sources.get(str(path))))

            submit(ahead)
            done = 0
            target = self._target(len(todo))
            try:
                while pending:
                    if self.stop is not None and self.stop.is_set():
                        for fut in pending:
                            fut.cancel()
                        break
                    future = pending.popleft()
                    submit(1)
                    prepared = future.result()
                    if isinstance(prepared, FileError):
                        self.report.fail(prepared)
                    else:
                        batch.append(prepared)
                    done += 1
                    if len(batch) >= target or (not pending and batch):
                        self._embed(model, batch, self.lanes)
                        batch = []
                        target = self._target(len(todo) - done)
                    self.bar.update(1)
                    if self.on_progress is not None:
                        self.on_progress(done, len(todo))
                if batch:  # stopped early: keep what was decoded
                    self._embed(model, batch, self.lanes)
            finally:
                self._drain(0)

    def _target(self, left: int) -> int:
        """Files for the batch that starts now, with `left` files not yet in a batch: the
        batch size, until what is left fits one batch per lane; from then on an even share
        per lane, or, for a model whose cost per image does not grow in small batches (its
        tail batch), half a lane's share of what is left down to that size: the model calls
        still running after the last decode are then short and side by side."""
        size = self.ingester.batch_size
        if self.lanes == 1 or left > size * self.lanes:  # one lane: nothing runs beside it
            return size
        if self.share is None:
            self.share = max(1, -(-left // self.lanes))
        if not self.floor:
            return min(size, self.share)
        shrunk = -(-left // (TAIL_SPLIT * self.lanes))
        return max(1, self.floor, min(size, self.share, shrunk))

    def _embed(self, model: ThreadPoolExecutor, batch: list[Prepared], lanes: int) -> None:
        """Start a batch's model call; write the oldest ones while `lanes` are in flight."""
        batch = self.ingester.unmoved(batch, self.new, self.report)
        if batch:
            self.embedding.append((batch, model.submit(self.ingester.embed, batch)))
        self._drain(lanes - 1)

    def _drain(self, keep: int) -> None:
        """Write finished batches, oldest first, until at most `keep` are in flight."""
        while len(self.embedding) > keep:
            batch, vectors = self.embedding.popleft()
            self.ingester.write_embedded(batch, vectors.result(), self.report)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # the read reports it
    return st.st_size, st.st_mtime_ns
