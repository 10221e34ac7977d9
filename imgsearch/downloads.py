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
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from .errors import ImgSearchError
from .fetch import Downloader, FetchSession, check_url
from .ingest import AddReport, FileError, Ingester, ProgressHook

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"
STOP_POLL_S = 0.1  # how often a running download job looks at its stop flag


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
        async with self.adder.downloader.session() as session:
            tasks = {asyncio.ensure_future(self._download(session, url)): url for url in valid}
            pending = set(tasks)
            try:
                while pending and not self.stop.is_set():
                    finished, pending = await asyncio.wait(
                        pending, timeout=STOP_POLL_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in finished:
                        self._arrived(tasks[task], task.result())
                    if len(self.ready) >= self.adder.batch_size or (self.ready and not pending):
                        await self._index()
            finally:  # stopped (or failed): what is in flight is dropped
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

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
