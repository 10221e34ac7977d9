"""Watched folders: real file operations on disk, and the index following them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import ConfigError
from imgsearch.search import SearchOptions
from imgsearch.service import Service
from imgsearch.watched import Watch
from imgsearch.web.app import create_app

from .helpers import (
    PHOTOS,
    ClientFactory,
    get_json,
    photo,
    small_disk,
    unprivileged,
    wait_for,
)


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


# Opens the daemon on a data dir (argv: data dir, model config, seconds to watch), counts the
# syncs its watch makes in that time after the first, and prints them with the watch's state.
WATCH_A_WHILE = """
    import json, sys, time
    from pathlib import Path

    from imgsearch.config import Config
    from imgsearch.embedders.clip import ClipEmbedder
    from imgsearch.service import Service
    from imgsearch.watch import Watcher

    data_dir, model_config, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    syncs = []
    real = Watcher._sync
    Watcher._sync = lambda self, *a: (syncs.append(time.monotonic()), real(self, *a))[1]
    config = Config(
        data_dir=data_dir, model="imgsearch-test-tiny", pretrained=None,
        model_config=model_config, batch_size=4, workers=1,
    ).resolved()
    embedder = ClipEmbedder(
        config.model, pretrained=None, checkpoint=None, model_config=model_config, device="cpu"
    )
    service = Service(config, embedder=embedder)
    (watch,) = service.watcher.watches()
    deadline = time.monotonic() + 60
    while watch.synced is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(seconds)
    print(json.dumps({"state": watch.state, "syncs": len(syncs), "removed": watch.removed}))
    service.close()
"""


@pytest.mark.parametrize("locked", ["sub", "."])
def test_an_unreadable_folder_keeps_its_images_and_is_synced_once(
    tmp_path: Path, make_service: Callable[..., Service], config: Config, locked: str
) -> None:
    """chmod 000 on a subfolder (or the watched folder unlistable): its files cannot be
    checked (EACCES), which is no sign they went. They were forgotten at the next sync, and
    an unreadable subfolder made the watch fail and sync again every second."""
    folder = tmp_path / "photos"
    save(folder / "top.jpg", PHOTOS[0])
    for name in PHOTOS[1:3]:
        save(folder / "sub" / f"{name}.jpg", name)
    first = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(first, folder))
    ids = stored(first)
    first.catalog.store.metadata.replace({i: {"k": "v"} for i in ids.values()})
    first.close()

    os.chmod(folder / locked, 0o600 if locked == "." else 0)
    try:
        seen = unprivileged(WATCH_A_WHILE, str(config.data_dir), str(config.model_config), "2.5")
    finally:
        os.chmod(folder / locked, 0o755)
    assert seen == {"state": "watching", "syncs": 1, "removed": 0}
    again = make_service()
    assert stored(again) == ids and missing(again) == set()
    kept = again.catalog.store.metadata.get(list(ids.values()))
    assert kept == {i: {"k": "v"} for i in ids.values()}, "and their metadata"


def test_a_file_and_a_folder_swapped_for_each_other(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """A file replaced by a folder of its name was never forgotten (only a path with nothing
    there was); a folder replaced by a file of its name had that new file marked missing with
    the folder's images."""
    folder = tmp_path / "photos"
    a, b = save(folder / "a.jpg", PHOTOS[0]), save(folder / "b.jpg", PHOTOS[1])
    x = save(folder / "sub.jpg" / "x.jpg", PHOTOS[2])
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))

    a.unlink()
    inner = save(a / "inner.jpg", PHOTOS[3])
    shutil.rmtree(folder / "sub.jpg")
    sub = save(folder / "sub.jpg", PHOTOS[4])
    wait_for("new files indexed", lambda: {str(inner), str(sub)} <= set(stored(service)))
    wait_for("the file now a folder forgotten", lambda: str(a) not in stored(service))
    wait_for("the folder now a file: its image missing", lambda: missing(service) == {str(x)})
    assert searchable(service, sub)
    service.close()

    b.unlink()  # while the daemon is down: the sync at start sees it
    save(b / "inner.jpg", PHOTOS[5])
    again = make_service()
    wait_for("synced", lambda: watching(again, folder))
    assert str(b) not in stored(again) and str(b / "inner.jpg") in stored(again)


def test_an_unmounted_disk_is_missing_not_forgotten(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """A watched mount point whose disk is unmounted stays as an empty folder, on another
    device: nothing happened live, and the next sync forgot the files at its top."""
    kept = tmp_path / "kept"
    with small_disk(tmp_path / "mnt", 8) as mnt:
        files = [save(mnt / "top.jpg", PHOTOS[0]), save(mnt / "2020" / "inner.jpg", PHOTOS[1])]
        shutil.copytree(mnt, kept, copy_function=shutil.copy2)
        service = make_service(watch=(mnt,))
        wait_for("initial sync", lambda: watching(service, mnt))
        ids = stored(service)
        subprocess.run(["umount", str(mnt)], check=True)
        wait_for("images marked missing", lambda: missing(service) == {str(f) for f in files})
        assert service.watcher.watches()[0].state == "missing"
        service.close()

        again = make_service()  # a start with the disk still out: the folder is empty
        wait_for("found missing", lambda: again.watcher.watches()[0].state == "missing")
        assert missing(again) == {str(f) for f in files}, "nothing forgotten"
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
        shutil.copytree(kept, mnt, copy_function=shutil.copy2, dirs_exist_ok=True)
        wait_for("images back", lambda: stored(again) == ids)
        assert again.watcher.watches()[0].added == 0, "restored, not embedded again"


def test_deletions_behind_a_symlinked_folder_are_applied(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """Files seen through a symlinked folder are stored under their real paths; a deletion
    there (named under the link) was never applied, live or at a sync."""
    folder, outside = tmp_path / "photos", tmp_path / "elsewhere"
    x, y = save(outside / "x.jpg", PHOTOS[0]), save(outside / "y.jpg", PHOTOS[1])
    save(folder / "own.jpg", PHOTOS[2])
    os.symlink(outside, folder / "link")
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    assert {str(x), str(y)} <= set(stored(service))
    x.unlink()
    wait_for("deleted behind the link: forgotten", lambda: str(x) not in stored(service))
    service.close()

    y.unlink()  # while the daemon is down
    again = make_service()
    wait_for("synced", lambda: watching(again, folder))
    assert set(stored(again)) == {str(folder / "own.jpg")} and missing(again) == set()


def test_a_prune_keeps_a_row_a_user_add_moved_meanwhile(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """A watch's prune checks rows off any lock: a user's add that moved a row to its file's
    new path in between lost it (removed by id)."""
    folder = tmp_path / "photos"
    a = save(folder / "a.jpg", PHOTOS[0])
    save(folder / "keep.jpg", PHOTOS[1])
    service = make_service()
    service.ingester.add(folder)
    rows = service.catalog.store.files_under(str(folder))  # the prune read them ...
    moved = folder / "sub" / "b.jpg"
    moved.parent.mkdir()
    os.rename(a, moved)
    assert service.ingester.add(moved).moved == 1  # ... then a user's add moved one
    service.watcher._prune(Watch(folder), rows)
    assert set(stored(service)) == {str(moved), str(folder / "keep.jpg")}


def test_unwatching_does_not_wait_for_another_run(
    tmp_path: Path, make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch waiting for the ingester (a user's job running) kept DELETE /watch waiting for
    that whole job, up to a minute."""
    folder = tmp_path / "photos"
    save(folder / "a.jpg", PHOTOS[0])
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    waiting = threading.Event()
    real = service.ingester.add_files
    monkeypatch.setattr(
        service.ingester, "add_files", lambda *a, **k: (waiting.set(), real(*a, **k))[1]
    )
    with service.ingester._run_lock:  # another job's run
        save(folder / "b.jpg", PHOTOS[1])
        wait_for("the watch waiting for the run", waiting.is_set)
        start = time.monotonic()
        watch = service.watcher.remove(folder)
        assert time.monotonic() - start < 5
    assert watch.state == "stopped" and watch.thread is not None
    assert not watch.thread.is_alive()


@pytest.mark.parametrize("how", ["mv", "rm"])
def test_a_folder_replaced_by_another_of_its_name_is_watched_again(
    tmp_path: Path, make_service: Callable[..., Service], how: str
) -> None:
    """`mv photos photos.old && mkdir photos` (or `rm -rf photos && mkdir photos`): the
    watcher went on following the old folder (inotify watches inodes, not names) while the
    name still was a folder on the same device, so nothing in the new one was ever indexed.
    (A new folder may even get the old one's inode number back: ext4 reuses it at once.)"""
    folder = tmp_path / "photos"
    a = save(folder / "a.jpg", PHOTOS[0])
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    if how == "mv":
        os.rename(folder, tmp_path / "photos.old")
    else:
        shutil.rmtree(folder)
    folder.mkdir()
    b = save(folder / "b.jpg", PHOTOS[1])
    wait_for("a file in the new folder indexed", lambda: str(b) in stored(service))
    c = save(folder / "c.jpg", PHOTOS[2])
    wait_for("a file saved later indexed", lambda: str(c) in stored(service))
    assert str(a) not in stored(service)
    if how == "mv":
        assert missing(service) == {str(a)}, "a folder moved away: its image is missing"
    wait_for("watching the new folder", lambda: watching(service, folder))


def test_files_saved_during_the_first_sync_are_indexed(
    tmp_path: Path, make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher started only after the sync (its walk, then the embedding of what it found,
    which can take hours, or wait for another job's run): files saved in between were never
    indexed, until a restart."""
    folder = tmp_path / "photos"
    a = save(folder / "a.jpg", PHOTOS[0])
    service = make_service()
    waiting = threading.Event()
    real = service.ingester.add_files
    monkeypatch.setattr(
        service.ingester, "add_files", lambda *a, **k: (waiting.set(), real(*a, **k))[1]
    )
    with service.ingester._run_lock:  # another job's run: the sync waits for it
        service.watcher.add(folder)
        wait_for("the sync walked and waits for the run", waiting.is_set)
        b = save(folder / "b.jpg", PHOTOS[1])
    wait_for("the file saved during the sync indexed", lambda: str(b) in stored(service))
    assert str(a) in stored(service)
    wait_for("watching", lambda: watching(service, folder))


def test_listing_the_watches_does_not_wait_for_an_add(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """GET /watch lists the folders on the event loop, under the lock that adding (or
    removing) a watch holds over its SQLite write, which waits for any other write (a bulk
    import's batch, a big /remove): while one did, the whole daemon stood still."""
    service = make_service()
    folder = tmp_path / "photos"
    folder.mkdir()
    held, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with service.catalog.store.db.write():
            held.set()
            release.wait(60)

    writer = threading.Thread(target=long_write)
    writer.start()
    held.wait()
    adder = threading.Thread(target=service.watcher.add, args=(folder,))
    adder.start()
    listed: list[list[Watch]] = []
    try:
        wait_for("the add holding the lock", service.watcher._lock.locked)
        threading.Thread(
            target=lambda: listed.append(service.watcher.watches()), daemon=True
        ).start()
        wait_for("the watches listed while the add waits for the write", lambda: bool(listed))
        assert listed == [[]], "the folder is listed once it is added"
    finally:
        release.set()
        writer.join()
        adder.join()
    assert [w.path for w in service.watcher.watches()] == [folder]
    assert service.watcher.count() == 1


def test_a_symlinked_folder_unlinked_from_a_watch_leaves_the_search(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """Images seen through a symlinked folder are stored under its target: with the link
    removed no prune looked there again, live or at a sync, and they stayed searchable for
    good, even once their files were deleted (those of a subfolder moved out go missing)."""
    folder, outside = tmp_path / "photos", tmp_path / "archive"
    own = save(folder / "own.jpg", PHOTOS[0])
    x = save(outside / "x.jpg", PHOTOS[1])
    os.symlink(outside, folder / "linked")
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    assert set(stored(service)) == {str(own), str(x)}

    (folder / "linked").unlink()
    wait_for("the unlinked folder's image missing", lambda: missing(service) == {str(x)})
    assert set(stored(service)) == {str(own)} and not searchable(service, x)

    os.symlink(outside, folder / "linked")  # linked again: back with its stored vector
    wait_for("back", lambda: str(x) in stored(service))
    assert missing(service) == set() and service.watcher.watches()[0].restored == 1
    (folder / "linked").unlink()
    wait_for("missing again", lambda: missing(service) == {str(x)})
    wait_for("watching", lambda: watching(service, folder))


def test_an_unlinked_folder_another_watch_holds_stays(
    tmp_path: Path, make_service: Callable[..., Service]
) -> None:
    """A symlinked folder unlinked from one watch, but watched itself: its images stay."""
    folder, outside = tmp_path / "photos", tmp_path / "archive"
    x = save(outside / "x.jpg", PHOTOS[1])
    folder.mkdir()
    os.symlink(outside, folder / "linked")
    service = make_service(watch=(folder, outside))
    wait_for("initial syncs", lambda: watching(service, folder) and watching(service, outside))
    watch = service.watcher.watches()[0]
    synced = watch.synced
    assert watch.path == folder and synced is not None
    (folder / "linked").unlink()
    wait_for("synced again", lambda: (watch.synced or 0) > synced)
    assert str(x) in stored(service) and missing(service) == set()


def test_atomic_saves_in_a_watch_that_follows_a_link_sync_nothing_again(
    tmp_path: Path, make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save by temp file and rename (rsync, editors) is a deletion of the temp name: in a
    watch that follows a symlinked folder every such save made a full sync."""
    from imgsearch.watch import Watcher

    syncs: list[str] = []
    sync = Watcher._sync
    monkeypatch.setattr(
        Watcher, "_sync", lambda self, w, ident: (syncs.append(str(w.path)), sync(self, w, ident))
    )
    folder, outside = tmp_path / "photos", tmp_path / "archive"
    save(folder / "a.jpg", PHOTOS[0])
    save(outside / "x.jpg", PHOTOS[1])
    os.symlink(outside, folder / "linked")
    service = make_service(watch=(folder,))
    wait_for("initial sync", lambda: watching(service, folder))
    assert len(syncs) == 1
    for i in range(3):  # (each step seen by the watcher on its own, as a slow copy is)
        temp = folder / f".b{i}.jpg.XyZ12{i}"
        photo(PHOTOS[2 + i], 150 + i).save(temp, format="JPEG", quality=90)
        time.sleep(1.0)
        os.rename(temp, folder / f"b{i}.jpg")
        (folder / "notes.txt").write_text("x")
        time.sleep(1.0)
        (folder / "notes.txt").unlink()
        time.sleep(1.0)
    wait_for("the saves indexed", lambda: str(folder / "b2.jpg") in stored(service))
    wait_for("watching", lambda: watching(service, folder))
    assert len(syncs) == 1
    (folder / "linked").unlink()  # a followed link deleted: that one syncs
    wait_for("the link's image missing", lambda: missing(service) == {str(outside / "x.jpg")})
    assert len(syncs) == 2


def test_a_folder_replaced_while_its_watcher_starts_is_watched_again(
    tmp_path: Path, make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's first answer was thrown away, the folder's own deletion with it: with
    the new folder's inode the old one's (ext4 reuses it), the watch followed the dead one."""
    import watchfiles

    folder = tmp_path / "photos"
    save(folder / "a.jpg", PHOTOS[0])
    start = watchfiles.watch
    replaced: list[bool] = []

    def watch(path: Path, **kwargs: Any) -> Any:
        changes = start(path, **kwargs)
        if replaced:
            return changes

        def first_replaced() -> Any:
            first = set(next(changes, set()))  # (the watcher started: it follows this inode)
            shutil.rmtree(path)
            os.mkdir(path)
            replaced.append(True)
            gone = (watchfiles.Change.deleted, str(path))
            for _ in range(100):  # as if it had all come in the first answer
                first |= next(changes, set())
                if gone in first:
                    break
            yield first
            yield from changes

        return first_replaced()

    monkeypatch.setattr(watchfiles, "watch", watch)
    service = make_service(watch=(folder,))
    wait_for("watching", lambda: replaced and watching(service, folder))
    b = save(folder / "b.jpg", PHOTOS[1])
    wait_for("a file in the new folder indexed", lambda: str(b) in stored(service))
