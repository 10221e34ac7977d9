"""The database read into the page cache after a start (store/warming.py), on real files: what
the page cache holds is asked of the kernel (mincore), before and after."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.config import Config
from imgsearch.cpu import IOPRIO_IDLE, IOPRIO_SYSCALLS, io_priority
from imgsearch.embedders import Embedder
from imgsearch.store import warming
from imgsearch.store.warming import KEEP_FREE, DatabaseWarmer, mem_available
from imgsearch.web import create_app

from .helpers import ClientFactory, cached_share, get_json, photo, uncached

SIZE = 24 << 20


@pytest.fixture
def cold(tmp_path: Path) -> Path:
    """A 24 MB file out of the page cache (skipped where the kernel keeps it anyway)."""
    path = tmp_path / "db.sqlite3"
    path.write_bytes(os.urandom(SIZE))
    uncached(path)
    if cached_share(path) > 0.5:
        pytest.skip("this filesystem keeps the file's pages cached")
    return path


def test_reads_the_file_into_the_page_cache(cold: Path) -> None:
    warmer = DatabaseWarmer(cold, available=lambda: SIZE + KEEP_FREE)
    warmer.run()
    assert (warmer.state, warmer.read, warmer.size) == ("done", SIZE, SIZE)
    assert cached_share(cold) > 0.95
    assert warmer.stats() == {"state": "done", "size_mb": 25.2, "read_mb": 25.2}


@pytest.mark.parametrize("available", [SIZE + KEEP_FREE - 1, None])
def test_a_file_that_does_not_fit_is_not_read(cold: Path, available: int | None) -> None:
    warmer = DatabaseWarmer(cold, available=lambda: available)
    warmer.run()
    assert (warmer.state, warmer.read) == ("skipped", 0)
    assert cached_share(cold) < 0.5


def test_closed_before_it_reads_stops(cold: Path) -> None:
    warmer = DatabaseWarmer(cold, available=lambda: 1 << 50)
    warmer.close()
    warmer.run()
    assert (warmer.state, warmer.read) == ("stopped", 0)


def test_a_missing_file_fails_quietly(tmp_path: Path) -> None:
    warmer = DatabaseWarmer(tmp_path / "gone.sqlite3", available=lambda: 1 << 50)
    warmer.start().join(10)
    assert warmer.state == "failed"


def test_memory_available_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n")
    assert mem_available(meminfo) == 1000 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert mem_available(meminfo) is None
    assert mem_available(tmp_path / "none") is None
    assert (mem_available() or 0) > 0  # this machine's


async def test_the_daemon_reads_its_database_in_and_says_so(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    assert Config().warm_database == "auto"
    config = dataclasses.replace(config, warm_database="on")
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(config, embedder=tiny_embedder)
    )
    photo("chelsea").save(tmp_path / "cat.jpg")
    await get_json(client, "/add", image=str(tmp_path / "cat.jpg"))
    await client.close()
    uncached(config.data_dir / "imgsearch.sqlite3")
    client = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    warm: dict[str, object] = {}
    for _ in range(200):
        warm = (await get_json(client, "/stats"))["database_warm"]
        if warm["state"] != "waiting" and warm["state"] != "reading":
            break
        await asyncio.sleep(0.05)
    assert warm["state"] == "done" and warm["read_mb"] == warm["size_mb"] > 0
    await client.close()
    off = dataclasses.replace(config, warm_database="off")
    client = await aiohttp_client(create_app(off, embedder=tiny_embedder))
    assert (await get_json(client, "/stats"))["database_warm"] == {"state": "off"}


def test_the_reading_thread_yields_the_disk_and_the_cpu(cold: Path) -> None:
    """The reads go in the idle I/O class and the thread in the idle scheduling class, so a
    search's own reads and work come first; the threads that start it keep theirs."""
    seen: dict[str, object] = {}
    warmer = DatabaseWarmer(cold, available=lambda: 1 << 50)
    original = warmer._read

    def read() -> None:
        seen["io"] = io_priority()
        seen["policy"] = os.sched_getscheduler(threading.get_native_id())
        original()

    warmer._read = read  # type: ignore[method-assign]
    warmer.start().join(30)
    assert warmer.state == "done"
    if platform.machine() in IOPRIO_SYSCALLS:
        assert seen["io"] == IOPRIO_IDLE
        assert io_priority() != IOPRIO_IDLE
    assert seen["policy"] == os.SCHED_IDLE
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE


def test_a_close_while_it_waits_for_another_warm_up_is_quick(cold: Path) -> None:
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(30,), daemon=True)
    other.start()
    warmer = DatabaseWarmer(cold, available=lambda: 1 << 50)
    thread = warmer.start(after=other)
    started = time.monotonic()
    warmer.close()
    assert not thread.is_alive() and time.monotonic() - started < 2.0
    assert (warmer.state, warmer.read) == ("stopped", 0)
    release.set()


def test_auto_reads_once_the_searches_find_the_disk_slow(
    cold: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warming, "SLOW_POLL", 0.01)
    slow = threading.Event()
    warmer = DatabaseWarmer(cold, available=lambda: 1 << 50, slow=slow.is_set)
    thread = warmer.start()
    time.sleep(0.2)
    assert (warmer.state, warmer.read, warmer.stats()["size_mb"]) == ("watching", 0, 25.2)
    assert cached_share(cold) < 0.5
    slow.set()
    thread.join(30)
    assert (warmer.state, warmer.read) == ("done", SIZE) and cached_share(cold) > 0.95


def test_a_close_while_it_watches_is_quick(cold: Path) -> None:
    warmer = DatabaseWarmer(cold, available=lambda: 1 << 50, slow=lambda: False)
    thread = warmer.start()
    time.sleep(0.1)
    started = time.monotonic()
    warmer.close()
    assert not thread.is_alive() and time.monotonic() - started < 2.0
    assert (warmer.state, warmer.read) == ("stopped", 0)
