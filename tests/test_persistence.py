"""Store and index on disk: migrations, model stamp, atomic saves, recovery from bad index files."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from imgsearch.catalog import DB_FILE, INDEX_DIR, LEGACY_INDEX_FILE, Catalog
from imgsearch.errors import ConfigError
from imgsearch.index import IndexFileError
from imgsearch.index import base as B
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
    np.testing.assert_allclose(changed[0].vectors[0], vec(3), atol=1e-3)  # float16
    store.close()


def test_bulk_upsert_ids_counters_and_a_path_named_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    first = store.images.upsert([item(f"/b/{n}.jpg", n) for n in range(1200)])  # > one chunk
    assert first.ids == sorted(first.ids) and len(set(first.ids)) == 1200
    assert store.count() == 1200
    store.images.remove_ids(first.ids[:10])  # ids are not reused: the next ones skip these
    store.images.set_missing(first.ids[10:12], True)
    again = [item("/b/new.jpg", 7), item("/b/10.jpg", 8), item("/b/20.jpg", 9)]
    second = store.images.upsert(again)
    assert second.updated == [first.ids[10], first.ids[20]]  # a missing one comes back
    assert second.ids[0] > first.ids[-1] and second.ids[1:] == second.updated
    assert store.count() == 1200 - 10 - 1 + 1 and store.images.missing() == 1
    twice = store.images.upsert([item("/b/x.jpg", 1), item("/b/x.jpg", 2), item("/b/30.jpg", 3)])
    assert twice.ids[0] == twice.ids[1] and twice.updated == [twice.ids[1], first.ids[30]]
    assert store.count() == 1191
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    for path, vid in [("/b/x.jpg", twice.ids[0]), ("/b/new.jpg", second.ids[0])]:
        assert conn.execute("SELECT id FROM images WHERE path=?", (path,)).fetchone() == (vid,)
    assert conn.execute("SELECT count(*) FROM images WHERE missing=0").fetchone()[0] == 1191
    chunk = next(store.images.vectors(ids=[twice.ids[0]]))
    np.testing.assert_allclose(chunk.vectors[0], vec(2), atol=1e-3)  # the later row won


def test_a_new_database_s_pages_fit_its_rows(tmp_path: Path) -> None:
    """A 1280-d row (~2.7 KB) fills a 4 KB page alone: a new database for that model gets
    pages that hold several rows, in fewer bytes a row; 512-d keeps 4 KB; an existing file
    keeps its pages whatever the dimension it is opened with."""
    dim, n = 1280, 600
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    rows = [
        NewImage(FileFacts(f"/photos/archive/2024/{i:06d}.jpg", i, i, f"{i:064x}", 4, 3), v)
        for i, v in enumerate(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    ]
    sizes = {}
    for name, store_dim in (("sized", dim), ("default", 0)):
        path = tmp_path / f"{name}.sqlite3"
        store = Store(path, store_dim)
        store.images.upsert(rows)
        pages = store.db.reader().execute("PRAGMA page_size").fetchone()[0]
        store.close()
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            used = conn.execute("SELECT page_count - freelist_count FROM pragma_page_count, "
                                "pragma_freelist_count").fetchone()[0]  # fmt: skip
        sizes[name] = (pages, used * pages / n)
    assert sizes["default"][0] == 4096 and sizes["sized"][0] > 4096
    assert sizes["sized"][1] < 0.8 * sizes["default"][1], sizes
    assert Store(tmp_path / "small.sqlite3", 512).db.reader().execute(
        "PRAGMA page_size").fetchone()[0] == 4096  # fmt: skip
    reopened = Store(tmp_path / "sized.sqlite3", 512)
    assert reopened.db.reader().execute("PRAGMA page_size").fetchone()[0] == sizes["sized"][0]
    assert reopened.count() == n
    middle = int(reopened.ids()[n // 2])  # ids in the rows' order
    chunk = next(reopened.images.vectors(ids=[middle]))
    np.testing.assert_allclose(chunk.vectors[0], rows[n // 2].vector, atol=1e-3)
    reopened.close()


def test_a_batch_as_columns_is_stored_row_by_row(tmp_path: Path) -> None:
    """A batch handed as columns (Rows, as an import does): every row's facts in its own row,
    every vector's float16 blob exact across the blob cuts (upsert._blobs, ~JOIN_BYTES a
    cut: 1,500 rows of 1,000-d in three), updates and inserts mixed in one batch."""
    from imgsearch.store import Rows
    from imgsearch.store.rows import JOIN_BYTES

    n, dim = 1500, 1000
    assert n > 2 * JOIN_BYTES // (2 * dim)  # over two cuts
    store = Store(tmp_path / "db.sqlite3")
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    paths = [f"/k/{i}.jpg" for i in range(n)]
    sources = [f"http://x/{i}" if i % 3 == 0 else None for i in range(n)]
    rows = Rows(paths, list(range(n)), [7] * n, [f"h{i}" for i in range(n)],
                [i % 5 for i in range(n)], [9] * n, sources, vectors)  # fmt: skip
    first = store.images.upsert(rows.take(range(0, n, 2)))  # the even rows
    assert len(first.ids) == n // 2 and first.updated == []
    second = store.images.upsert(rows)  # the even rows again (updated), the odd ones new
    assert second.updated == first.ids and second.ids[::2] == first.ids
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    got = conn.execute(
        "SELECT id, path, size, mtime_ns, sha256, width, height, source, vector FROM images"
    ).fetchall()
    by_path = {row[1]: row for row in got}
    assert len(got) == n and store.count() == n
    for i in (0, 1, 2, 523, 524, 1048, 1049, n - 1):
        id_, path, size, mtime, sha, width, height, source, blob = by_path[paths[i]]
        assert (id_, size, mtime, sha, width, height, source) == (
            second.ids[i],
            i,
            7,
            f"h{i}",
            i % 5,
            9,
            sources[i],
        )
        assert blob == vectors[i].astype("<f2").tobytes()
    picked = rows.take([5, 2])
    assert picked.paths == ["/k/5.jpg", "/k/2.jpg"] and picked.sizes == [5, 2]
    assert np.array_equal(picked.vectors, vectors[[5, 2]]) and rows.take(range(n)) is rows
    store.close()


def test_float16_blobs_by_torch_are_numpy_s_bits() -> None:
    """The store's float16 conversion (torch's where the daemon has it loaded) rounds every
    value as numpy's cast does: tiny, huge (to inf), NaN, inf, negative zero alike."""
    import torch  # noqa: F401  (loaded: the conversion goes through it)

    from imgsearch.store.upsert import _blobs

    rng = np.random.default_rng(2)
    scale = np.logspace(-10, 6, 300, dtype=np.float32)
    vectors = rng.standard_normal((500, 300)).astype(np.float32) * scale
    vectors[0, :5] = [np.nan, np.inf, -np.inf, -0.0, 70_000.0]
    with np.errstate(over="ignore"):
        want = [row.astype("<f2").tobytes() for row in vectors]
    assert _blobs(vectors) == want
    vectors.flags.writeable = False  # numpy's cast (torch warns about read-only arrays)
    with np.errstate(over="ignore"):
        assert _blobs(vectors) == want


def test_float16_blobs_while_another_thread_imports_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store written while torch is half imported (another thread's import under way: the
    index worker's k-means loads it lazily) converts with numpy, not the half-made module."""
    import importlib.machinery
    import types

    from imgsearch.store.upsert import _blobs

    half_made = types.ModuleType("torch")
    half_made.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half_made.__spec__._initializing = True  # type: ignore[attr-defined]  (as importlib sets it)
    monkeypatch.setitem(sys.modules, "torch", half_made)  # no from_numpy yet
    vectors = np.random.default_rng(3).standard_normal((40, 16)).astype(np.float32)
    assert _blobs(vectors) == [row.astype("<f2").tobytes() for row in vectors]


def test_new_rows_span_several_inserts_in_order(tmp_path: Path) -> None:
    """New rows go in as many to an INSERT as the bound-parameter limit allows: with the
    limit of SQLite builds before 3.32 (999: 90 rows a statement), 200 rows take 3 statements,
    and every row keeps its own id (consecutive, in order), facts and vector; rows at an exact
    multiple of a statement's are not lost or doubled."""
    store = Store(tmp_path / "db.sqlite3")
    with store.db.write() as conn:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    for count in (200, 180, 1):
        before = store.count()
        rows = [item(f"/c/{count}-{n}.jpg", n) for n in range(count)]
        ids = store.images.upsert(rows).ids
        assert ids == list(range(ids[0], ids[0] + count)) and store.count() == before + count
        got = store.file_states([r.facts.path for r in rows])
        assert [got[r.facts.path].id for r in rows] == ids
        assert [got[r.facts.path].size for r in rows] == [100 + n for n in range(count)]
        chunk = next(store.images.vectors(ids=ids))
        order = np.argsort(chunk.ids)
        np.testing.assert_allclose(chunk.vectors[order], [vec(n) for n in range(count)], atol=1e-3)
    store.close()


def test_inserts_bind_at_most_bind_rows_rows(tmp_path: Path) -> None:
    """Where SQLite binds many parameters (250,000 in Debian's build), a batch still goes in
    BIND_ROWS rows a statement: binding holds the GIL, and one statement for a whole import
    batch held it ~25 ms (every request waited). Each INSERT is seen through the connection's
    trace callback; the rows all land, in order."""
    from imgsearch.store import upsert

    store = Store(tmp_path / "db.sqlite3")
    inserts: list[int] = []

    def seen(sql: str) -> None:
        if sql.startswith("INSERT INTO images"):
            inserts.append(sql.count("),(") + 1)

    with store.db.write() as conn:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 250_000)
        conn.set_trace_callback(seen)
    count = 2 * upsert.BIND_ROWS + 3
    ids = store.images.upsert([item(f"/b/{n}.jpg", n) for n in range(count)]).ids
    assert inserts == [upsert.BIND_ROWS, upsert.BIND_ROWS, 3]
    assert ids == list(range(ids[0], ids[0] + count)) and store.count() == count
    store.close()


def test_vectors_stacked_through_joins() -> None:
    """upsert.stacked: rows of any dtype and layout as one writable float32 matrix, equal to
    np.array's, also over several joins; rows of different lengths refused."""
    from imgsearch.store import stacked

    m = np.arange(24, dtype=np.float32).reshape(4, 6)
    rows = [m[0], m[1].astype(np.float16), m[:, 2][:3].tolist() + [1, 2, 3], m[3]]
    got = stacked(rows)
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_array_equal(got, np.array(rows, dtype=np.float32))
    got[0, 0] = -1  # a copy: the rows are not changed
    assert m[0, 0] == 0 and stacked([]).shape == (0, 0)
    with pytest.raises(ValueError, match="different lengths"):
        stacked([m[0], m[0][:5]])
    from imgsearch.store.rows import JOIN_BYTES

    per = JOIN_BYTES // (4 * 1000)  # rows a join: 5 joins, the last one partial
    many = np.random.default_rng(0).standard_normal((4 * per + 7, 1000)).astype(np.float32)
    np.testing.assert_array_equal(stacked(list(many)), many)
    np.testing.assert_array_equal(stacked(list(many[: per + 1])), many[: per + 1])


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


def _base(data_dir: Path) -> Path:
    (only,) = B.saved(data_dir / INDEX_DIR)
    return only


def _keep(data_dir: Path, name: str) -> None:
    shutil.copytree(_base(data_dir), data_dir / name)


def _put_back(data_dir: Path, name: str) -> None:
    shutil.rmtree(data_dir / INDEX_DIR)
    (data_dir / INDEX_DIR).mkdir()
    shutil.copytree(data_dir / name, data_dir / INDEX_DIR / "000000000001-exact")


def test_base_save_load_roundtrip_and_damage(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    ids = _fill(catalog, 5)
    catalog.index.rebase()
    catalog.close()
    path = _base(tmp_path)
    base = B.load(path, "m/test", DIM)
    assert base.meta.count == 5 and base.ids.tolist() == sorted(ids)
    _, found = base.index.search(vec(3)[None, :], 1)
    assert found[0, 0] == ids[3]
    with pytest.raises(IndexFileError, match="made by m/test"):
        B.load(path, "other", DIM)
    data = (path / B.INDEX).read_bytes()
    for damaged in (data[: len(data) // 2], b"junk"):
        (path / B.INDEX).write_bytes(damaged)
        with pytest.raises(IndexFileError):
            B.load(path, "m/test", DIM)
    (path / B.META).write_text("{not json")
    with pytest.raises(IndexFileError, match="meta.json"):
        B.load(path, "m/test", DIM)


def _fill(catalog: Catalog, n: int, start: int = 0) -> list[int]:
    return catalog.put([item(f"/p/{i}.jpg", i) for i in range(start, start + n)]).ids


def _same_ids(catalog: Catalog) -> bool:
    return sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()


def test_clean_restart_loads_the_saved_base_and_replays_the_rest(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 5)
    catalog.index.rebase()
    catalog.close()
    again = open_catalog(tmp_path)
    assert again.index_origin == "loaded" and len(again.index) == 5 and _same_ids(again)
    _fill(again, 2, start=5)  # only in SQLite and the recent segment: replayed at start
    again.close()
    third = open_catalog(tmp_path)
    assert third.index_origin == "replayed" and len(third.index) == 7 and _same_ids(third)
    third.close()


@pytest.mark.parametrize("damage", ["missing", "truncated", "junk-meta", "legacy"])
def test_bad_saved_base_is_rebuilt_from_sqlite(tmp_path: Path, damage: str) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 6)
    catalog.index.rebase()
    catalog.close()
    path = _base(tmp_path)
    if damage == "missing":
        shutil.rmtree(path)
    elif damage == "truncated":
        data = (path / B.INDEX).read_bytes()
        (path / B.INDEX).write_bytes(data[: len(data) - 100])
    elif damage == "junk-meta":
        (path / B.META).write_text('{"model_id": 1}')
    else:  # a data dir of an older version: index.faiss, no index/ folder
        shutil.rmtree(tmp_path / INDEX_DIR)
        (tmp_path / LEGACY_INDEX_FILE).write_bytes(b"IMGSEARCH-FAISS 1\n{}")
    (tmp_path / INDEX_DIR).mkdir(exist_ok=True)
    (tmp_path / INDEX_DIR / ("0-exact" + B.TEMP_SUFFIX)).mkdir()
    again = open_catalog(tmp_path)
    assert again.index_origin == "rebuilt" and len(again.index) == 6 and _same_ids(again)
    assert not list((tmp_path / INDEX_DIR).glob("*" + B.TEMP_SUFFIX))
    assert not (tmp_path / LEGACY_INDEX_FILE).exists()
    (hit,) = again.nearest(vec(3)[None, :], 1)
    assert hit[0].path == "/p/3.jpg"
    again.close()
    assert B.load(_base(tmp_path), "m/test", DIM).meta.count == 6  # the rebuilt base was saved


def test_older_base_is_caught_up_from_sqlite(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    ids = _fill(catalog, 4)
    catalog.index.rebase()
    _keep(tmp_path, "old")
    catalog.remove_tree("/p/1.jpg")
    catalog.put([item("/p/2.jpg", 42)])  # changed vector, same id
    _fill(catalog, 2, start=10)
    catalog.index.rebase()
    catalog.close()
    _put_back(tmp_path, "old")

    again = open_catalog(tmp_path)
    assert again.index_origin == "replayed" and _same_ids(again)
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
    catalog.index.rebase()  # a base of generation 2 ...
    catalog.close()
    shutil.copy(tmp_path / "old.sqlite3", tmp_path / DB_FILE)  # ... and a database of 1
    for extra in ("-wal", "-shm"):
        (tmp_path / (DB_FILE + extra)).unlink(missing_ok=True)
    again = open_catalog(tmp_path)
    assert again.index_origin == "rebuilt" and len(again.index) == 3 and _same_ids(again)
    again.close()


def test_removed_images_never_come_back(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    _fill(catalog, 4)
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
    catalog.index.rebase()
    _keep(tmp_path, "before")
    assert sorted(catalog.mark_missing("/p")) == sorted(ids)
    assert catalog.nearest(vec(0)[None, :], 10) == [[]] and catalog.store.missing() == 4
    catalog.close()
    _put_back(tmp_path, "before")  # a base saved before

    again = open_catalog(tmp_path)
    assert again.index_origin == "replayed" and len(again.index) == 0, "missing ones dropped"
    again.index.rebase()
    _keep(tmp_path, "while-missing")
    assert again.restore(ids) == 4
    (hits,) = again.nearest(vec(2)[None, :], 1)
    assert hits[0].id == ids[2] and round(hits[0].similarity, 4) == 1.0
    again.close()
    _put_back(tmp_path, "while-missing")

    third = open_catalog(tmp_path)
    assert third.index_origin == "replayed" and sorted(third.index.ids().tolist()) == ids
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


def test_counters_and_float16_vectors_with_old_float32_rows(tmp_path: Path) -> None:
    """Schema v5: counts come from trigger-kept counters; new vectors are float16 (half the
    bytes), and float32 rows written by older versions still read back exactly."""
    path = tmp_path / DB_FILE
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version={number}")
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?)", [("model", "m/test"), ("dim", str(DIM))]
    )
    for i, missing in ((1, 0), (2, 0), (3, 1)):
        conn.execute(
            "INSERT INTO images(path, size, mtime_ns, sha256, width, height, vector, generation,"
            " added_at, updated_at, missing) VALUES (?, 1, 2, 'h', 3, 4, ?, 1, 0, 0, ?)",
            (f"/old/{i}.jpg", vec(i).astype("<f4").tobytes(), missing),
        )
    conn.commit()
    conn.close()
    catalog = open_catalog(tmp_path)
    store = catalog.store
    assert (store.count(), store.missing()) == (2, 1)
    old = {int(i): v for c in store.vectors() for i, v in zip(c.ids, c.vectors, strict=True)}
    np.testing.assert_array_equal(sorted(old), [1, 2])
    np.testing.assert_allclose(old[1], vec(1), rtol=1e-6)  # float32 rows: exact
    new = catalog.put([item("/new/a.jpg", 7), item("/new/b.jpg", 8)]).ids
    (blob,) = (
        sqlite3.connect(path).execute("SELECT vector FROM images WHERE id=?", (new[0],)).fetchone()
    )
    assert len(blob) == 2 * DIM, "float16 on disk"
    got = catalog.vectors([new[0], 1])
    assert float(got[new[0]] @ vec(7)) >= 0.9999 and float(got[1] @ vec(1)) == pytest.approx(1.0)
    assert (store.count(), store.missing()) == (4, 1)
    catalog.mark_missing("/new")
    catalog.restore(catalog.store.ids()[:0].tolist() + [3])
    assert (store.count(), store.missing()) == (3, 2)
    catalog.remove_tree("/")
    assert (store.count(), store.missing()) == (0, 0)
    catalog.close()


def test_the_write_ahead_log_is_cut_back_after_a_long_read(tmp_path: Path) -> None:
    """A long read (an export) beside writes (an import) grew the WAL by every batch, and it
    kept its largest size until the daemon stopped."""
    from imgsearch.store import FileFacts, NewImage, Store
    from imgsearch.store.db import WAL_LIMIT_BYTES

    store = Store(tmp_path / "db.sqlite", 512)
    rng = np.random.default_rng(0)

    def write(start: int, n: int) -> None:
        for at in range(start, start + n, 2000):
            store.images.upsert([
                NewImage(FileFacts(f"/p/{i}.jpg", 1, 1, f"{i:064x}", 1, 1), rng.normal(size=512))
                for i in range(at, min(at + 2000, start + n))
            ])  # fmt: skip

    write(0, 100)
    reader = store.db.reader()
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM images").fetchone()  # a snapshot held: no checkpoint
    write(100, 80_000)  # ~100 MB of float16 rows and their pages
    wal = tmp_path / "db.sqlite-wal"
    assert wal.stat().st_size > WAL_LIMIT_BYTES
    reader.execute("COMMIT")
    write(80_100, 2_000)  # its commit's checkpoint copies the whole log into the database
    write(82_100, 10)  # and the next write starts the log again, cut back to the limit
    assert wal.stat().st_size <= WAL_LIMIT_BYTES
    store.close()
