"""Catalog change notifications, and the derived files (features, thumbnails) that follow them."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from imgsearch.catalog import DB_FILE, Catalog, Change
from imgsearch.config import Config
from imgsearch.derived import DerivedFiles, stamp
from imgsearch.embedders import Embedder
from imgsearch.service import Service
from imgsearch.store import MIGRATIONS, FileFacts, NewImage, Store

from .helpers import PHOTOS, photo

DIM = 8


def item(path: str, seed: int) -> NewImage:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    facts = FileFacts(path, 100 + seed, 1_000 + seed, f"sha{seed}", 10, 20)
    return NewImage(facts, v / np.linalg.norm(v))


def test_a_file_marked_missing_is_no_search_result_before_the_index_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite commits `missing` before the index drops the ids: a search in between returned
    images of a vanished folder as ordinary results."""
    catalog = Catalog(tmp_path, "m/test", DIM)
    try:
        images = [item("/w/a.jpg", 1), item("/w/b.jpg", 2), item("/k/c.jpg", 3)]
        ids = catalog.put(images).ids
        query = np.stack([image.vector for image in images]).astype(np.float32)
        monkeypatch.setattr(catalog.index, "remove", lambda *args: None)  # not followed yet
        assert sorted(catalog.mark_missing("/w")) == sorted(ids[:2])
        assert len(catalog.index) == 3
        for hits in catalog.nearest(query, 3):
            assert [h.path for h in hits] == ["/k/c.jpg"]
    finally:
        monkeypatch.undo()
        catalog.close()


def test_every_committed_write_is_announced_with_its_generation(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, "m/test", DIM)
    seen: list[Change] = []
    catalog.subscribe(seen.append)

    a, b, c = catalog.put([item("/p/a.jpg", 1), item("/p/b.jpg", 2), item("/q/c.jpg", 3)]).ids
    assert seen[-1] == Change((a, b, c), (), catalog.store.generation())
    catalog.put([item("/p/a.jpg", 4)])
    assert seen[-1].written == (a,) and seen[-1].removed == ()

    assert catalog.move(a, "/p/b.jpg", 7, 8) == b
    assert seen[-1] == Change((a,), (b,), catalog.store.generation())
    assert catalog.mark_missing("/q") == [c]
    assert seen[-1].written == () and seen[-1].removed == (c,)
    assert catalog.restore([c]) == 1
    assert seen[-1].written == (c,) and seen[-1].removed == ()
    assert catalog.remove_ids([c, 999]) == [c]
    assert seen[-1].removed == (c,)
    assert catalog.remove_tree("/p") == [a]
    assert seen[-1] == Change((), (a,), catalog.store.generation())

    count = len(seen)  # writes that change nothing are not announced
    assert catalog.remove_tree("/nothing") == [] and catalog.remove_ids([12345]) == []
    assert catalog.restore([]) == 0 and catalog.mark_missing("/nothing") == []
    assert len(seen) == count
    generations = [change.generation for change in seen]
    assert generations == sorted(set(generations)), "one new generation per write"
    catalog.close()


def test_a_failing_listener_never_undoes_a_write(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, "m/test", DIM)
    seen: list[Change] = []

    def broken(change: Change) -> None:
        raise RuntimeError("listener bug")

    catalog.subscribe(broken)
    catalog.subscribe(seen.append)
    (a,) = catalog.put([item("/p/a.jpg", 1)]).ids
    assert seen == [Change((a,), (), catalog.store.generation())]
    assert catalog.store.count() == len(catalog.index) == 1
    catalog.close()


def test_deletes_log_and_count_their_rows_in_a_statement_each(tmp_path: Path) -> None:
    """Schema v9: no trigger a deleted row. A folder (holding a missing image too), ids, and
    a move over a stored path each take their rows off the counters and log them for the
    next start, as the triggers did."""
    catalog = Catalog(tmp_path, "m/test", DIM)
    store = catalog.store
    catalog.put([item(f"/a/{i}.jpg", i) for i in range(5)] + [item("/a/gone/x.jpg", 5)])
    catalog.put([item(f"/b/{i}.jpg", 10 + i) for i in range(4)])
    catalog.mark_missing("/a/gone")
    ids = {f.path: f.id for f in store.images.files_under("/")}
    since = store.generation()
    removed = set(catalog.remove_tree("/a"))
    removed |= set(catalog.remove_ids([ids["/b/0.jpg"], 10**9, ids["/b/0.jpg"]]))
    replaced = catalog.move(ids["/b/1.jpg"], "/b/2.jpg", 1, 1)
    assert replaced == ids["/b/2.jpg"]
    removed.add(replaced)
    assert removed == {ids[p] for p in ids if p.startswith("/a/")} | {
        ids["/b/0.jpg"],
        ids["/b/2.jpg"],
    }
    conn = store.db.reader()
    truth = conn.execute("SELECT sum(missing = 0), sum(missing = 1) FROM images").fetchone()
    assert (store.count(), store.missing()) == tuple(truth) == (2, 0)
    logged = store.images.deleted_since(since)
    assert logged is not None and set(logged.tolist()) == removed
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall()
    assert not [t for (t,) in triggers if t.endswith("_delete")]
    catalog.close()
    reopened = Store(tmp_path / DB_FILE)
    assert (reopened.count(), reopened.missing()) == (2, 0)
    reopened.close()


def test_missing_flips_count_and_log_in_a_statement_each(tmp_path: Path) -> None:
    """Schema v10: no trigger left. Images marked missing (an id given twice, one absent, one
    already missing), restored, re-added (alone and twice in one batch) and moved while
    missing keep the counters equal to a count of the rows, and the ones marked missing are
    logged for the next start at the generation that marked them."""
    catalog = Catalog(tmp_path, "m/test", DIM)
    store = catalog.store
    conn = store.db.reader()

    def counted() -> tuple[int, int]:
        truth = conn.execute("SELECT sum(missing = 0), sum(missing = 1) FROM images").fetchone()
        assert (store.count(), store.missing()) == tuple(truth)
        return store.count(), store.missing()

    ids = catalog.put([item(f"/w/{i}.jpg", i) for i in range(8)] + [item("/k.jpg", 9)]).ids
    since = store.generation()
    assert sorted(catalog.mark_missing("/w")) == sorted(ids[:8])
    marked = store.generation()
    assert counted() == (1, 8)
    logged = store.images.deleted_since(since)
    assert logged is not None and sorted(logged.tolist()) == sorted(ids[:8])
    rows = conn.execute("SELECT DISTINCT generation FROM deletions WHERE generation > ?", (since,))
    assert rows.fetchall() == [(marked,)]
    again = store.images.set_missing([ids[0], ids[0], ids[8], 10**9], True)
    assert again.removed == [ids[8]] and counted() == (0, 9), "only a real flip counts"
    assert catalog.restore([ids[1], ids[1], 10**9]) == 1 and counted() == (1, 8)
    catalog.put([item("/w/2.jpg", 20)])  # re-added while missing: present again
    assert counted() == (2, 7)
    catalog.put([item("/w/3.jpg", 30), item("/w/3.jpg", 31), item("/w/new.jpg", 32)])
    assert counted() == (4, 6)
    assert catalog.move(ids[4], "/moved/4.jpg", 1, 1) is None and counted() == (5, 5)
    assert catalog.move(ids[5], "/w/6.jpg", 1, 1) == ids[6] and counted() == (6, 3)
    assert catalog.move(ids[0], "/k2.jpg", 1, 1) is None and counted() == (7, 2)
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall()
    assert triggers == []
    catalog.close()
    reopened = Store(tmp_path / DB_FILE)
    assert (reopened.count(), reopened.missing()) == (7, 2)
    reopened.close()


def test_the_counters_are_the_last_commits_read_without_sql(tmp_path: Path) -> None:
    """count() and missing() are what the last commit left (a rollback leaves them), kept in
    memory: they answer with no SQL at all (/stats serves them on the event loop)."""
    catalog = Catalog(tmp_path, "m/test", DIM)
    store = catalog.store
    catalog.put([item(f"/p/{i}.jpg", i) for i in range(5)] + [item("/q/x.jpg", 9)])
    catalog.mark_missing("/q")
    catalog.remove_ids(catalog.store.ids()[:1].tolist())
    with pytest.raises(RuntimeError), store.db.write() as conn:
        conn.execute("DELETE FROM images")  # a write abandoned: rolled back
        raise RuntimeError("abandoned")
    truth = (
        store.db.reader()
        .execute("SELECT sum(missing = 0), sum(missing = 1) FROM images")
        .fetchone()
    )
    assert (store.count(), store.missing()) == tuple(truth) == (4, 1)

    def no_sql() -> sqlite3.Connection:
        raise AssertionError("count() read SQLite")

    store.db.reader = no_sql  # type: ignore[method-assign]
    assert (store.count(), store.missing()) == (4, 1)
    catalog.close()
    reopened = Store(tmp_path / DB_FILE)
    assert (reopened.count(), reopened.missing()) == (4, 1)
    reopened.close()


@pytest.fixture
def service(config: Config, tiny_embedder: Embedder) -> Service:
    # No background feature precompute: the tests below write the cache themselves, and a
    # precompute finishing after the add would overwrite what they wrote.
    return Service(dataclasses.replace(config, precompute="off"), embedder=tiny_embedder)


def test_caches_of_the_old_layout_are_removed(config: Config, tiny_embedder: Embedder) -> None:
    config.data_dir.mkdir(parents=True)
    for name in ("features/sift/1.pkl", "thumbnails/1-2-256.jpg"):
        (config.data_dir / name).parent.mkdir(parents=True)
        (config.data_dir / name).write_bytes(b"old")
    Service(config, embedder=tiny_embedder).close()
    folders = {p.name for p in config.data_dir.iterdir() if p.is_dir()}
    assert "cache" in folders and not {"features", "thumbnails"} & folders


def test_the_id_a_move_replaces_loses_its_features_and_thumbnail(
    tmp_path: Path, service: Service
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    a, b = folder / "a.jpg", folder / "b.jpg"
    photo(PHOTOS[0], 96).save(a)
    photo(PHOTOS[1], 96).save(b)
    try:
        service.ingester.add(folder)
        ids = {p: s.id for p, s in service.catalog.store.file_states([str(a), str(b)]).items()}
        id_a, id_b = ids[str(a)], ids[str(b)]
        for image_id, path in ((id_a, a), (id_b, b)):
            service.thumbnails.get(image_id, path)
            service.features.put("verify", image_id, stamp(path.stat()), [image_id])
        st = a.stat()
        a.replace(b)  # a renamed over b: the row of a follows, the row of b is replaced

        assert service.catalog.move(id_a, str(b), st.st_size, st.st_mtime_ns) == id_b
        files = service.derived
        assert not files.path("thumbnails/256", id_b).exists(), "its thumbnail is gone"
        assert not files.path("features/verify", id_b).exists(), "its features are gone"
        assert files.path("thumbnails/256", id_a).exists(), "the moved image keeps its own"
        assert service.features.get("verify", id_a, stamp(st)) == [id_a]
    finally:
        service.close()


def test_one_derived_file_per_kind_and_image_valid_for_one_version(tmp_path: Path) -> None:
    files = DerivedFiles(tmp_path)
    V1, V2 = (100, 100, 5), (101, 101, 5)  # (mtime_ns, ctime_ns, size): a file written again
    files.write("thumbnails/256", 4, V1, b"jpeg v1")
    files.write("features/sift", 4, V1, b"sift")
    files.write("features/sift", 5, V1, b"other")
    assert files.read("thumbnails/256", 4, V1) == b"jpeg v1"
    assert files.read("thumbnails/256", 4, V2) is None, "the image file changed since"
    assert files.read("thumbnails/256", 4, (100, 101, 5)) is None, "rewritten, mtime kept"
    assert files.read("thumbnails/256", 4, (100, 100, 6)) is None, "another size"
    files.write("thumbnails/256", 4, V2, b"jpeg v2")
    assert files.read("thumbnails/256", 4, V2) == b"jpeg v2"
    assert [p.name for p in (tmp_path / "thumbnails" / "256").iterdir()] == ["4"]

    files.invalidate(4)
    assert files.read("thumbnails/256", 4, V2) is None
    assert files.read("features/sift", 4, V1) is None
    assert files.read("features/sift", 5, V1) == b"other"
    files.write("thumbnails/256", 6, V1, b"jpeg")
    files.invalidate(5, 6, 7)  # a removed folder's ids, in one call; 7 has no files
    assert files.read("features/sift", 5, V1) is None
    assert not list((tmp_path / "thumbnails" / "256").iterdir())
    # More ids than a small folder can hold: the folder is read, not each name tried.
    for image_id in (10, 500, 2000):
        files.write("features/sift", image_id, V1, b"f")
    files.invalidate(*range(1000))
    assert sorted(p.name for p in (tmp_path / "features" / "sift").iterdir()) == ["2000"]
    for bad in ("../x/y", "features", "features/../../etc", "Features/x"):
        with pytest.raises(ValueError):
            files.path(bad, 1)


def test_a_version_3_database_gives_old_jobs_their_kind_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version={number}")
    old_jobs = (("a", "/photos", 1), ("b", "http://x/a.jpg", 0), ("c", "3 URLs", 0))
    for job_id, label, refresh in old_jobs:
        conn.execute(
            "INSERT INTO jobs(id, image, refresh, state, done, total, report, error, created,"
            " started, finished) VALUES (?, ?, ?, 'done', 0, 0, '{}', NULL, 1, NULL, NULL)",
            (job_id, label, refresh),
        )
    conn.commit()
    conn.close()
    store = Store(path)
    rows = {row.id: row for row in store.jobs.recent(10)}
    assert {i: (r.kind, r.update) for i, r in rows.items()} == {
        "a": ("path", True),
        "b": ("urls", False),
        "c": ("urls", False),
    }
    store.jobs.save(dataclasses.replace(rows["b"], image="/looks/like/a/path"))
    assert {r.id: r.kind for r in store.jobs.recent(10)}["b"] == "urls", "kind is not guessed"
    store.close()


def test_a_derived_file_of_an_image_removed_meanwhile_is_dropped_and_swept(
    tmp_path: Path,
) -> None:
    """A thumbnail or features being made while their image was removed were written after
    its invalidation, and a kill -9 between a removal's commit and its invalidation left the
    files too: kept for good (ids are never reused), 100-250 KB of features each."""
    stored = {1, 3}
    files = DerivedFiles(tmp_path, alive=lambda image_id: image_id in stored)
    files.write("thumbnails/256", 2, (1, 1, 1), b"jpeg")  # 2 was removed while it was made
    assert not files.path("thumbnails/256", 2).exists()
    files.write("thumbnails/256", 1, (1, 1, 1), b"jpeg")
    assert files.read("thumbnails/256", 1, (1, 1, 1)) == b"jpeg"

    left = DerivedFiles(tmp_path)  # as the files a kill -9 left, seen at the next start
    for image_id in range(1, 7):
        left.write("features/verify", image_id, (1, 1, 1), b"features")
    old_temp = tmp_path / "features" / "verify" / ".tmp-earlier-run"
    old_temp.write_bytes(b"half")
    os.utime(old_temp, (1, 1))
    fresh = DerivedFiles(tmp_path)
    own_temp = tmp_path / "features" / "verify" / ".tmp-being-written"
    own_temp.write_bytes(b"half")  # a write of this run, in flight
    asked: list[list[int]] = []

    def present(ids: Sequence[int]) -> set[int]:
        asked.append(list(ids))
        return stored.intersection(ids)

    assert fresh.sweep(present, threading.Event()) == 5  # 2, 4, 5, 6 and the old temp file
    left_over = sorted(p.name for p in (tmp_path / "features" / "verify").iterdir())
    assert left_over == [".tmp-being-written", "1", "3"]
    assert sorted(i for chunk in asked for i in chunk) == [1, 1, 2, 3, 4, 5, 6]  # 2 kinds
    stop = threading.Event()
    stop.set()
    assert fresh.sweep(lambda ids: (), stop) == 0, "a stopping daemon stops the sweep"


def test_a_cache_folder_that_cannot_be_written_only_skips_caching(tmp_path: Path) -> None:
    """Only a full disk was skipped: any other failure (a folder left owned by root, a
    read-only mount) failed the thumbnail or the comparison that only wanted to cache."""
    files = DerivedFiles(tmp_path)
    (tmp_path / "thumbnails").write_text("not a folder")  # mkdir fails: NotADirectoryError
    files.write("thumbnails/256", 1, (1, 1, 1), b"jpeg")
    assert files.failing and files.read("thumbnails/256", 1, (1, 1, 1)) is None
    files.write("features/sift", 1, (1, 1, 1), b"sift")
    assert not files.failing and files.read("features/sift", 1, (1, 1, 1)) == b"sift"
