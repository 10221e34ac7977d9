"""Watched folders: real file operations on disk, and the index following them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import ConfigError
from imgsearch.search import SearchOptions
from imgsearch.service import Service
from imgsearch.web.app import create_app

from .helpers import PHOTOS, ClientFactory, get_json, photo, wait_for


def save(path: Path, name: str, size: int = 200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(name, size).save(path, quality=90)
    return path


def stored(service: Service) -> dict[str, int]:
    """Present images: path -> id."""
    rows = service.catalog.store.files_under("/")
    return {r.path: r.id for r in rows if not r.missing}


def missing(service: Service) -> set[str]:
    return {r.path for r in service.catalog.store.files_under("/") if r.missing}


def searchable(service: Service, path: Path) -> bool:
    """Whether a search with the file finds the file itself first."""
    hits = service.searcher.by_path(path, SearchOptions(limit=1))
    return bool(hits) and hits[0].image == str(path)


@pytest.fixture
def make_service(config: Config, tiny_embedder: Embedder) -> Iterator[Callable[..., Service]]:
    opened: list[Service] = []

    def make(**changes: Any) -> Service:
        service = Service(dataclasses.replace(config, **changes), embedder=tiny_embedder)
        opened.append(service)
        return service

    yield make
    for service in opened:
        service.close()


def watching(service: Service, folder: Path) -> bool:
    return any(w.path == folder and w.state == "watching" for w in service.watcher.watches())


def test_the_index_follows_creates_changes_moves_and_deletes(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    folder = tmp_path / "photos"
    a, b = save(folder / "a.jpg", PHOTOS[0]), save(folder / "b.jpg", PHOTOS[1])
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    assert set(stored(service)) == {str(a), str(b)}

    c = save(folder / "c.jpg", PHOTOS[2])
    wait_for("created file indexed", lambda: str(c) in stored(service))
    assert searchable(service, c)

    before = service.catalog.store.file_states([str(a)])[str(a)]
    save(a, PHOTOS[3])
    wait_for(
        "changed file re-embedded",
        lambda: service.catalog.store.file_states([str(a)])[str(a)].mtime_ns != before.mtime_ns,
    )
    assert searchable(service, a)

    b_id = stored(service)[str(b)]
    vector = service.catalog.vectors([b_id])[b_id]
    moved = folder / "sub" / "renamed.jpg"
    moved.parent.mkdir()
    os.rename(b, moved)
    wait_for("moved file followed", lambda: str(moved) in stored(service))
    assert str(b) not in stored(service)
    assert stored(service)[str(moved)] == b_id, "a move keeps the image's row"
    assert (service.catalog.vectors([b_id])[b_id] == vector).all(), "and its vector"
    # The folder's counters add up a run's report when the run ends, just after its rows commit.
    wait_for("move counted", lambda: service.watcher.watches()[0].moved == 1)
    assert searchable(service, moved)

    c.unlink()
    wait_for("deleted file forgotten", lambda: str(c) not in stored(service))
    assert str(c) not in missing(service), "a file deleted from a folder still there is gone"
    assert len(service.catalog.index) == service.catalog.store.count() == 2


def test_a_burst_of_files_is_indexed_in_few_batches(
    tmp_path: Path, make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "burst"
    folder.mkdir()
    service = make_service(watch=(folder,))
    wait_for("watching", lambda: watching(service, folder))
    calls: list[int] = []
    real = service.ingester.add_files

    def counting(files: list[Path], **kwargs: Any) -> Any:
        calls.append(len(files))
        return real(files, **kwargs)

    monkeypatch.setattr(service.ingester, "add_files", counting)
    images = [photo(name, 96) for name in PHOTOS[:4]]
    for i in range(24):
        images[i % 4].rotate(i * 15).save(folder / f"{i:02}.jpg")
    wait_for("burst indexed", lambda: service.catalog.store.count() == 24)
    assert sum(calls) == 24
    assert len(calls) <= 4, f"24 files created at once were applied in {len(calls)} batches"


def test_a_vanished_folder_is_marked_missing_and_comes_back(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    disk = tmp_path / "disk"
    folder = disk / "photos"
    files = [save(folder / f"{name}.jpg", name) for name in PHOTOS[:3]]
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    ids = stored(service)

    unmounted = tmp_path / "elsewhere"
    shutil.copytree(disk, unmounted, copy_function=shutil.copy2)  # the disk, kept aside
    shutil.rmtree(disk)  # "unmounted": the folder and everything in it disappear at once
    wait_for("images marked missing", lambda: missing(service) == {str(f) for f in files})
    assert stored(service) == {}
    assert len(service.catalog.index) == 0
    assert service.stats()["missing"] == 3
    assert service.watcher.watches()[0].state == "missing"
    assert service.catalog.store.count() == 0 and service.catalog.store.missing() == 3

    shutil.copytree(unmounted, disk, copy_function=shutil.copy2)  # "mounted" again (new inodes)
    wait_for("images back", lambda: stored(service) == ids)
    assert missing(service) == set()
    watch = service.watcher.watches()[0]
    wait_for("watching again", lambda: watch.state == "watching")
    assert watch.restored == 3 and watch.added == 3, "restored from stored vectors, not re-added"
    assert all(searchable(service, f) for f in files)


def test_a_vanished_subfolder_is_missing_but_a_deleted_file_is_forgotten(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    folder = tmp_path / "photos"
    top = save(folder / "top.jpg", PHOTOS[0])
    inner = save(folder / "card" / "inner.jpg", PHOTOS[1])
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    shutil.rmtree(folder / "card")
    top.unlink()
    wait_for("top forgotten", lambda: str(top) not in stored(service))
    wait_for("inner missing", lambda: str(inner) in missing(service))
    assert str(top) not in missing(service)

    save(inner, PHOTOS[1])  # same bytes (deterministic JPEG), new mtime: re-embedded in place
    wait_for("inner back", lambda: str(inner) in stored(service))
    assert missing(service) == set()


def test_watches_are_remembered_and_changes_while_stopped_are_caught_up(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    folder = tmp_path / "photos"
    a = save(folder / "a.jpg", PHOTOS[0])
    b = save(folder / "b.jpg", PHOTOS[1])
    first = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(first, folder))
    b_id = stored(first)[str(b)]
    first.close()

    renamed = folder / "b-renamed.jpg"
    os.rename(b, renamed)  # moved while the daemon was down
    c = save(folder / "c.jpg", PHOTOS[2])
    a.unlink()

    second = make_service()  # no --watch: the folder is remembered in the database
    assert [w.path for w in second.watcher.watches()] == [folder]
    wait_for("caught up", lambda: watching(second, folder))
    assert stored(second) == {str(renamed): b_id, str(c): stored(second)[str(c)]}
    assert second.watcher.watches()[0].moved == 1


def test_files_under_the_data_dir_are_never_indexed(
    tmp_path: Path, make_service: Callable[..., Service], config: Config
) -> None:
    """A watched folder holding the data dir must not index the daemon's own thumbnails."""
    root = config.data_dir.parent
    photo_file = save(root / "photos" / "a.jpg", PHOTOS[0])
    service = make_service(watch=(root,))
    wait_for("initial sync", lambda: watching(service, root))
    save(config.data_dir / "thumbnails" / "fake.jpg", PHOTOS[1])
    save(root / "photos" / "b.jpg", PHOTOS[2])
    wait_for("b indexed", lambda: len(stored(service)) == 2)
    assert str(photo_file) in stored(service)
    assert not any(p.startswith(str(config.data_dir)) for p in stored(service))


async def test_watch_routes(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    save(folder / "a.jpg", PHOTOS[0])
    client = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    assert await get_json(client, "/watch") == {"watches": []}

    created = await get_json(client, "/watch", 201, dir=str(folder))
    assert created["dir"] == str(folder)
    again = await get_json(client, "/watch", 200, dir=str(folder))
    assert again["dir"] == str(folder)
    for _ in range(300):
        listing = await get_json(client, "/watch")
        if listing["watches"][0]["state"] == "watching":
            break
        await asyncio.sleep(0.1)
    (entry,) = listing["watches"]
    assert entry["state"] == "watching" and entry["added"] == 1
    stats = await get_json(client, "/stats")
    assert stats["watched"] == 1 and stats["images"] == 1 and stats["missing"] == 0

    await get_json(client, "/watch", 404, dir=str(tmp_path / "nope"))
    await get_json(client, "/watch", 400, dir="relative/folder")
    await get_json(client, "/watch", 404, dir=str(folder / "a.jpg"))  # no folder there
    await get_json(client, "/watch", 400, dir="")

    resp = await client.delete("/watch", params={"dir": str(folder)})
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "stopped", body
    assert await get_json(client, "/watch") == {"watches": []}
    resp = await client.delete("/watch", params={"dir": str(folder)})
    assert resp.status == 404
    assert (await get_json(client, "/stats"))["images"] == 1, "unwatching keeps the images"


def test_a_bad_watch_flag_is_refused_and_releases_the_data_dir(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    a_file = save(tmp_path / "photos" / "a.jpg", PHOTOS[0])
    with pytest.raises(ConfigError, match="not a folder"):
        make_service(watch=(a_file,))
    with pytest.raises(ConfigError, match="outside the folders"):
        make_service(watch=(tmp_path / "photos",), allow_roots=(tmp_path / "elsewhere",))
    service = make_service(watch=(tmp_path / "photos",))  # the data dir lock was released
    wait_for("watching", lambda: watching(service, tmp_path / "photos"))


def test_polling_mode_follows_changes_too(
    tmp_path: Path, make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Network file systems send no events: watchfiles' polling (WATCHFILES_FORCE_POLLING)."""
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    folder = tmp_path / "nfs"
    a = save(folder / "a.jpg", PHOTOS[0])
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    b = save(folder / "b.jpg", PHOTOS[1])
    wait_for("created file indexed", lambda: str(b) in stored(service))
    a_id = stored(service)[str(a)]
    os.rename(a, folder / "c.jpg")
    wait_for("moved", lambda: stored(service).get(str(folder / "c.jpg")) == a_id)
