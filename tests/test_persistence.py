"""Store and index on disk: migrations, model stamp, atomic saves, recovery from bad index files."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from imgsearch.catalog import DB_FILE, INDEX_FILE, Catalog
from imgsearch.errors import ConfigError
from imgsearch.index import IndexFileError, Stamp, VectorIndex
from imgsearch.store import MIGRATIONS, FileFacts, NewImage, Store

DIM = 8


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def item(path: str, seed: int) -> NewImage:
    return NewImage(FileFacts(path, 100 + seed, 1_000 + seed, f"sha{seed}", 10, 20), vec(seed))


def open_catalog(data_dir: Path, model: str = "m/test") -> Catalog:
    data_dir.mkdir(exist_ok=True)
    return Catalog(data_dir, model, DIM)


def test_schema_is_migrated_and_versioned(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.close()
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer than this imgsearch"):
        Store(tmp_path / "db.sqlite3")


def test_upsert_insert_update_and_generation(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    g0 = store.generation()
    first = store.images.upsert([item("/a/1.jpg", 1), item("/a/2.jpg", 2)])
    assert first.updated == [] and len(set(first.ids)) == 2 and first.generation == g0 + 1
    second = store.images.upsert([item("/a/1.jpg", 3), item("/a/3.jpg", 4)])
    assert second.updated == [first.ids[0]] and second.ids[0] == first.ids[0]
    assert store.count() == 3
    states = store.file_states(["/a/1.jpg", "/nope"])
    assert list(states) == ["/a/1.jpg"] and states["/a/1.jpg"].size == 103
    changed = list(store.vectors(since_generation=first.generation))
    assert sorted(changed[0].ids.tolist()) == sorted(second.ids)
    np.testing.assert_allclose(changed[0].vectors[0], vec(3))
    store.close()


def test_remove_tree_matches_folder_not_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.images.upsert(
        [item(p, i) for i, p in enumerate(["/x/a.jpg", "/x/a/b.jpg", "/x/ab.jpg", "/x/a"])]
    )
    removed = store.images.remove_tree("/x/a").removed
    assert len(removed) == 2  # "/x/a" itself and "/x/a/b.jpg", not "/x/a.jpg" or "/x/ab.jpg"
    assert set(store.file_states(["/x/a.jpg", "/x/ab.jpg"])) == {"/x/a.jpg", "/x/ab.jpg"}
    store.close()


def test_model_stamp_refuses_another_model(tmp_path: Path) -> None:
    open_catalog(tmp_path).close()
    with pytest.raises(ConfigError, match="holds vectors of model m/test"):
        open_catalog(tmp_path, model="other/model")


def test_index_save_load_roundtrip_and_damage(tmp_path: Path) -> None:
    index = VectorIndex(DIM)
    index.add(np.array([5, 9]), np.stack([vec(5), vec(9)]))
    path = tmp_path / "i.faiss"
    index.save(path, Stamp("m", DIM, 7, 2))
    loaded, stamp = VectorIndex.load(path, "m", DIM)
    assert stamp == Stamp("m", DIM, 7, 2)
    assert sorted(loaded.ids().tolist()) == [5, 9]
    _, ids = loaded.search(vec(9)[None, :], 1)
    assert ids[0, 0] == 9
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(IndexFileError, match="made by m"):
        VectorIndex.load(path, "other", DIM)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"\0" * len(data), data[:-1] + b"x", b"junk"):
        path.write_bytes(damaged)
        with pytest.raises(IndexFileError):
            VectorIndex.load(path, "m", DIM)


def _fill(catalog: Catalog, n: int, start: int = 0) -> list[int]:
    return catalog.put([item(f"/p/{i}.jpg", i) for i in range(start, start + n)]).ids


def _same_ids(catalog: Catalog) -> bool:
    return sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()


def test_clean_restart_loads_the_saved_index(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 5)
    catalog.close()
    again = open_catalog(tmp_path)
    assert again.index_origin == "loaded" and len(again.index) == 5 and _same_ids(again)
    again.close()


@pytest.mark.parametrize("damage", ["missing", "truncated", "zeroed", "junk"])
def test_bad_index_file_is_rebuilt_from_sqlite(tmp_path: Path, damage: str) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 6)
    catalog.close()
    path = tmp_path / INDEX_FILE
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "zeroed":
        path.write_bytes(b"\0" * len(data))
    else:
        path.write_bytes(b"IMGSEARCH-FAISS 1\n{not json")
    (tmp_path / (INDEX_FILE + ".tmp")).write_bytes(b"half a save")
    again = open_catalog(tmp_path)
    assert again.index_origin == "rebuilt" and len(again.index) == 6 and _same_ids(again)
    assert not (tmp_path / (INDEX_FILE + ".tmp")).exists()
    (hit,) = again.nearest(vec(3)[None, :], 1)
    assert hit[0].path == "/p/3.jpg"
    again.close()
    assert VectorIndex.load(path, "m/test", DIM)[1].count == 6  # the rebuilt index was saved


def test_older_index_copy_is_caught_up(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    ids = _fill(catalog, 4)
    catalog.save()
    shutil.copy(tmp_path / INDEX_FILE, tmp_path / "old.faiss")
    catalog.remove_tree("/p/1.jpg")
    catalog.put([item("/p/2.jpg", 42)])  # changed vector, same id
    _fill(catalog, 2, start=10)
    catalog.close()
    shutil.copy(tmp_path / "old.faiss", tmp_path / INDEX_FILE)

    again = open_catalog(tmp_path)
    assert again.index_origin == "caught-up" and _same_ids(again)
    assert ids[1] not in again.index.ids().tolist()
    (hit,) = again.nearest(vec(42)[None, :], 1)
    assert (hit[0].path, round(hit[0].similarity, 4)) == ("/p/2.jpg", 1.0)
    again.close()


def test_index_ahead_of_database_is_rebuilt(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 3)
    catalog.close()
    shutil.copy(tmp_path / DB_FILE, tmp_path / "old.sqlite3")
    catalog = open_catalog(tmp_path)
    _fill(catalog, 3, start=3)
    catalog.close()
    shutil.copy(tmp_path / "old.sqlite3", tmp_path / DB_FILE)
    for extra in ("-wal", "-shm"):
        (tmp_path / (DB_FILE + extra)).unlink(missing_ok=True)
    again = open_catalog(tmp_path)
    assert again.index_origin == "rebuilt" and len(again.index) == 3 and _same_ids(again)
    again.close()


def test_removed_images_never_come_back(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 4)
    catalog.save()
    assert len(catalog.remove_tree("/p")) == 4
    (hits,) = catalog.nearest(vec(0)[None, :], 10)
    assert hits == []
    catalog.close()
    again = open_catalog(tmp_path)
    assert len(again.index) == 0 and again.nearest(vec(0)[None, :], 10) == [[]]
    again.close()


def test_a_version_2_database_is_migrated_keeping_its_images(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version={number}")
    conn.execute(
        "INSERT INTO images(path, size, mtime_ns, sha256, width, height, vector, generation,"
        " added_at, updated_at) VALUES ('/old/a.jpg', 1, 2, 'h', 3, 4, ?, 1, 0, 0)",
        (vec(1).tobytes(),),
    )
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.count() == 1 and store.missing() == 0
    (row,) = store.files_under("/old")
    assert (row.path, row.sha256, row.missing) == ("/old/a.jpg", "h", False)
    assert store.paths([row.id])[row.id].source is None
    assert store.watches.add("/old") and store.watches.list() == ["/old"]
    store.close()


def test_missing_images_leave_the_index_and_come_back_across_restarts(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    ids = _fill(catalog, 4)
    catalog.save()
    shutil.copy(tmp_path / INDEX_FILE, tmp_path / "before.faiss")
    assert sorted(catalog.mark_missing("/p")) == sorted(ids)
    assert catalog.nearest(vec(0)[None, :], 10) == [[]] and catalog.store.missing() == 4
    catalog.close()
    shutil.copy(tmp_path / "before.faiss", tmp_path / INDEX_FILE)  # an index saved before

    again = open_catalog(tmp_path)
    assert again.index_origin == "caught-up" and len(again.index) == 0, "missing ones dropped"
    again.save()
    shutil.copy(tmp_path / INDEX_FILE, tmp_path / "while-missing.faiss")
    assert again.restore(ids) == 4
    (hits,) = again.nearest(vec(2)[None, :], 1)
    assert hits[0].id == ids[2] and round(hits[0].similarity, 4) == 1.0
    again.close()
    shutil.copy(tmp_path / "while-missing.faiss", tmp_path / INDEX_FILE)

    third = open_catalog(tmp_path)
    assert third.index_origin == "caught-up" and sorted(third.index.ids().tolist()) == ids
    third.close()


def test_a_move_keeps_the_vector_and_replaces_what_was_at_the_new_path(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    first, second = catalog.put([item("/p/a.jpg", 1), item("/p/b.jpg", 2)]).ids
    assert catalog.move(first, "/p/b.jpg", 7, 8) == second
    assert set(catalog.store.paths([first, second])) == {first}, "the old b.jpg row is gone"
    assert catalog.store.paths([first])[first].path == "/p/b.jpg"
    (hits,) = catalog.nearest(vec(1)[None, :], 5)
    assert [(h.id, h.path) for h in hits] == [(first, "/p/b.jpg")]
    assert catalog.store.file_states(["/p/b.jpg"])["/p/b.jpg"].size == 7
    catalog.close()
