"""Adding images by URL: download them into DATA_DIR/downloads, index them with the URL as source.

A producer for the ingest core: it only turns URLs into downloaded files (with their URL), and
hands each batch of files to `Ingester.add_files`, which decides what to index.

Runs inside an add job, on the job thread, with an event loop of its own (`asyncio.run`), so
the job manager stays synchronous. Downloads run concurrently (the session's limit) and are
indexed in batches as they arrive, each batch off the loop while the next downloads go on.
A URL that fails is reported with its reason and status; the others carry on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from .errors import ImgSearchError
from .fetch import Downloader, FetchSession, check_url
from .files import TEMP_PREFIX
from .ingest import AddReport, FileError, Ingester, ProgressHook

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"
STOP_POLL_S = 0.1  # how often a running download job looks at its stop flag
IN_FLIGHT = 4  # download tasks made ahead, in multiples of the session's concurrency
SWEEP_CHUNK = 5_000  # files of the downloads folder looked up in the store at once (`sweep`)
CONTENT_NAME = re.compile(r"^[0-9a-f]{64}(\.[A-Za-z0-9]+)?$")  # <sha256>.<ext>: Downloader.save


def sweep(
    folder: Path,
    known: Callable[[Sequence[str]], Collection[str]],
    opened: float,
    stop: threading.Event,
    saved: Callable[[str], bool] = lambda name: False,
) -> int:
    """Delete the downloads no image holds (`unheld`) that are older than this start
    (`opened`, a time.time()) and not saved again since (`saved(name)`: Downloader.note_saves):
    those of images removed since, of adds stopped or killed before their batch was indexed,
    and temp files a kill -9 left mid-write. Each is looked at again just before it goes (an
    add may have stored the same bytes meanwhile). Once a start, in the background; stops
    early once `stop` is set. Returns how many."""
    if not folder.is_dir():
        return 0
    dropped = 0
    with os.scandir(folder) as entries:
        while chunk := list(itertools.islice(entries, SWEEP_CHUNK)):
            if stop.is_set():
                break
            old = [Path(e.path) for e in chunk if e.is_file(follow_symlinks=False)]
            for path in unheld([p for p in old if _unused(p, opened, saved)], known):
                if _unused(path, opened, saved) and unheld([path], known):
                    path.unlink(missing_ok=True)
                    dropped += 1
    if dropped:
        log.info("removed %d downloaded files that no image holds", dropped)
    return dropped


def unheld(paths: Sequence[Path], known: Callable[[Sequence[str]], Collection[str]]) -> list[Path]:
    """Of `paths` (files of the downloads folder), those no image holds. A download is named
    by its content's SHA-256, so it is held while any image has that content (`known(digests)`:
    those the store has), wherever the data dir was moved since (rows keep absolute paths).
    Temp files of a cut write too; never a file of another name."""
    digests = {p: p.name.split(".", 1)[0] for p in paths if CONTENT_NAME.match(p.name)}
    have = set(known(sorted(set(digests.values())))) if digests else set()
    temps = [p for p in paths if p.name.startswith(TEMP_PREFIX)]
    return temps + [p for p, digest in digests.items() if digest not in have]


def _unused(path: Path, since: float, saved: Callable[[str], bool]) -> bool:
    """Not written since `since`, nor saved again (`saved`)."""
    if saved(path.name):
        return False
    try:
        return path.stat(follow_symlinks=False).st_mtime < since
    except OSError:
        return False


class UrlAdder:
    """Downloads URLs into one folder and indexes what arrives."""

    def __init__(
        self, downloader: Downloader, ingester: Ingester, folder: Path, batch_size: int
    ) -> None:
        self.downloader = downloader
        self.ingester = ingester
        self.folder = folder
        self.batch_size = batch_size

    def add(
        self,
        urls: Sequence[str],
        *,
        update: bool = False,
        strict: bool = False,
        stop: threading.Event | None = None,
        on_progress: ProgressHook | None = None,
        report: AddReport | None = None,
        landed: dict[str, str] | None = None,
    ) -> AddReport:
        """Download and index `urls`; with `strict` (one URL, like one file) a failure raises.

        `done`/`total` count URLs: one is done once it is indexed, skipped or has failed.
        `landed` is filled with each URL downloaded (stripped, as check_url gives it) and the
        file it was saved as: the stored path that URL's metadata goes to."""
        report = AddReport() if report is None else report
        self.folder.mkdir(parents=True, exist_ok=True)
        stop = stop or threading.Event()
        landed = {} if landed is None else landed
        run = _Run(self, report, update, stop, on_progress, len(urls), landed)
        asyncio.run(run.all(urls))
        if strict:
            report.raise_single()
        return report


class _Run:
    """One add of URLs: what is downloaded and waiting, and how far it got."""

    def __init__(
        self,
        adder: UrlAdder,
        report: AddReport,
        update: bool,
        stop: threading.Event,
        on_progress: ProgressHook | None,
        total: int,
        landed: dict[str, str],
    ) -> None:
        self.adder = adder
        self.report = report
        self.update = update
        self.stop = stop
        self.on_progress = on_progress
        self.total = total
        self.done = 0
        self.ready: list[tuple[Path, str]] = []
        self.seen: set[Path] = set()
        self.landed = landed  # URL -> the file it was saved as

    async def all(self, urls: Sequence[str]) -> None:
        self._progress()
        valid = []
        for url in urls:
            try:
                valid.append(check_url(url))
            except ImgSearchError as exc:
                self._fail(FileError(str(url), exc.message, exc.status))
        # Tasks are made as room opens up (a window of IN_FLIGHT x the session's limit): one
        # task a URL up front made every wait scan them all (6,000 URLs: 13 s of CPU).
        window = max(1, IN_FLIGHT * self.adder.downloader.concurrency)
        waiting = iter(valid)
        async with self.adder.downloader.session() as session:
            tasks: dict[asyncio.Future[Path | FileError], str] = {}
            pending: set[asyncio.Future[Path | FileError]] = set()
            try:
                while not self.stop.is_set():
                    for url in itertools.islice(waiting, window - len(pending)):
                        started = asyncio.ensure_future(self._download(session, url))
                        tasks[started] = url
                        pending.add(started)
                    if not pending:
                        break
                    finished, pending = await asyncio.wait(
                        pending, timeout=STOP_POLL_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    for done in finished:
                        self._arrived(tasks.pop(done), done.result())
                    if len(self.ready) >= self.adder.batch_size or (self.ready and not pending):
                        await self._index()
            finally:  # stopped (or failed): what is in flight is dropped
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                await asyncio.get_running_loop().run_in_executor(None, self._drop_unheld)

    def _drop_unheld(self) -> None:
        """Delete what this run downloaded that no image holds: files a stop left waiting for
        their batch, or whose indexing failed (the store decides, not this run: the same
        bytes may be an image stored before)."""
        paths = [p for p, _ in self.ready] + list(self.seen)
        store = self.adder.ingester.catalog.store
        for path in unheld(paths, lambda digests: store.images.by_sha256(digests).keys()):
            if not path.name.startswith(TEMP_PREFIX):  # (a save still running owns its own)
                path.unlink(missing_ok=True)

    async def _download(self, session: FetchSession, url: str) -> Path | FileError:
        """Fetch, check and save one URL; never raises (but can be cancelled)."""
        try:
            fetched = await session.fetch(url)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, self.adder.downloader.save, fetched.data, self.adder.folder
            )
        except ImgSearchError as exc:
            return FileError(url, exc.message, exc.status)
        except Exception as exc:  # one URL must never stop the others
            log.exception("unexpected error while downloading %s", url)
            return FileError(url, f"unexpected error: {exc}", 500)

    def _arrived(self, url: str, result: Path | FileError) -> None:
        if isinstance(result, FileError):
            self._fail(result)
            return
        self.landed[url] = str(result)  # a repeat too: each URL's own metadata finds it
        if result in self.seen or any(p == result for p, _ in self.ready):
            self.report.skipped += 1  # the same image from another URL of this add
            self.done += 1
            self._progress()
        else:
            self.ready.append((result, url))

    async def _index(self) -> None:
        batch, self.ready = self.ready, []
        self.seen.update(path for path, _ in batch)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._index_batch, batch)
        self.done += len(batch)
        self._progress()

    def _index_batch(self, batch: list[tuple[Path, str]]) -> None:
        """Index downloaded files (blocking); errors name the URL, not the downloaded file."""
        url_of = {str(path): url for path, url in batch}
        part = self.adder.ingester.add_files(
            [path for path, _ in batch],
            label=f"{len(batch)} downloads",
            update=self.update,
            sources=url_of,
            stop=self.stop,
            report=AddReport(),
            progress_bar=False,
        )
        self.report.merge(part, names=url_of)

    def _fail(self, error: FileError) -> None:
        self.report.fail(error)
        self.done += 1
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
