"""Bulk import and export of vectors in the Parquet format: a real daemon app, real photos."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.bulk.batches import Group, Unreadable, groups
from imgsearch.bulk.format import (
    META_DIM,
    META_MODEL,
    BadRow,
    RowBatch,
    ShardInfo,
    table_of,
    write_shard,
)
from imgsearch.bulk.imports import ENCODERS, IN_FLIGHT, ImportJob, ImportManager, ahead
from imgsearch.catalog import Catalog
from imgsearch.config import Config
from imgsearch.cpu import BACKGROUND_NICE
from imgsearch.embedders import Embedder
from imgsearch.ingest import Checked
from imgsearch.store import FileFacts, Rows
from imgsearch.web import create_app

from .helpers import ClientFactory, get_json, ingester

Client = TestClient[web.Request, web.Application]


def shard_for(files: list[Path], embedder: Embedder, out: Path, name: str = "a.parquet") -> Path:
    """Vectors of files as /add would compute them, with their size and mtime."""
    vectors = embedder.embed_images([photo_of(f) for f in files])
    facts: dict[str, list[Any]] = {
        "size": [f.stat().st_size for f in files],
        "mtime_ns": [f.stat().st_mtime_ns for f in files],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    table = table_of(embedder.model_id, embedder.dim, [str(f) for f in files], vectors * 3, facts)
    write_shard(path, table)
    return path


def photo_of(path: Path) -> Any:
    from imgsearch.images import decode

    return decode(path.read_bytes(), min_side=224, max_pixels=10**8).image


async def import_dir(client: Client, folder: Path, status: int = 200, **extra: Any) -> Any:
    resp = await client.post("/import", json={"dir": str(folder), "wait": True, **extra})
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_imported_rows_are_searchable_and_add_skips_them(
    client: Client, photos: dict[str, Path], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    files = sorted(photos.values())
    shard_for(files, tiny_embedder, tmp_path / "shards")
    job = await import_dir(client, tmp_path / "shards")
    assert (job["state"], job["imported"], job["failed"], job["done"]) == ("done", 5, 0, 5)
    assert (await get_json(client, "/stats"))["images"] == 5
    for f in files:
        hits = (await get_json(client, "/search", image=str(f)))["results"]
        assert hits[0]["image"] == str(f)
        assert abs(hits[0]["distance"]) < 1e-4  # normalised to unit length on import
    report = await get_json(client, "/add", image=str(files[0].parent))
    assert (report["added"], report["skipped"]) == (0, 5)  # same size+mtime: not re-embedded
    again = await import_dir(client, tmp_path / "shards")
    assert (again["imported"], again["skipped"]) == (0, 5)


async def test_another_model_is_refused_before_any_row(
    client: Client, photos: dict[str, Path], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    folder = tmp_path / "shards"
    shard_for(sorted(photos.values())[:2], tiny_embedder, folder, "a.parquet")
    other = table_of("open_clip/ViT-B-32/laion2b", 512, ["/x.jpg"], np.ones((1, 512)))
    write_shard(folder / "b.parquet", other)
    body = await import_dir(client, folder, 400)
    assert "open_clip/ViT-B-32/laion2b (512-d)" in body["error"]
    assert tiny_embedder.model_id in body["error"] and body["status"] == 400
    assert (await get_json(client, "/stats"))["images"] == 0


async def test_bad_rows_are_reported_with_file_and_row(
    client: Client, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    dim = tiny_embedder.dim
    good = np.ones(dim, np.float32)
    nan = good.copy()
    nan[3] = np.nan
    rows = [
        ("/pics/ok.jpg", good.tolist()),
        ("/pics/short.jpg", [1.0] * (dim - 1)),
        ("/pics/nan.jpg", nan.tolist()),
        ("/pics/zero.jpg", [0.0] * dim),
        ("pics/relative.jpg", good.tolist()),
        ("/pics/null.jpg", None),
        ("https://example.com/ok2.jpg", (-good).tolist()),
    ]
    sch = pa.schema(
        [("path", pa.string()), ("vector", pa.list_(pa.float16())), ("album", pa.string())],
        metadata={META_MODEL: tiny_embedder.model_id, META_DIM: str(dim)},
    )
    table = pa.table(
        {
            "path": [p for p, _ in rows],
            "vector": [v for _, v in rows],
            "album": ["x"] * len(rows),
        },
        schema=sch,
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "rows.parquet")
    job = await import_dir(client, tmp_path / "in")
    assert (job["state"], job["imported"], job["failed"]) == ("done", 2, 5)
    errors = {e["row"]: e["error"] for e in job["errors"]}
    assert all(e["file"] == str(tmp_path / "in" / "rows.parquet") for e in job["errors"])
    assert f"{dim - 1} values, not {dim}" in errors[1]
    assert "NaN" in errors[2] and "zeros" in errors[3]
    assert "absolute" in errors[4] and "null" in errors[5]


async def test_another_dim_and_not_parquet_are_400(client: Client, tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.parquet").write_bytes(b"not parquet")
    assert "not a readable Parquet" in (await import_dir(client, tmp_path / "junk", 400))["error"]
    await import_dir(client, tmp_path / "missing", 404)
    resp = await client.post("/import", json={"dir": "relative"})
    assert resp.status == 400


async def test_path_map_rewrites_prefixes(
    client: Client, photos: dict[str, Path], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    files = sorted(photos.values())
    vectors = tiny_embedder.embed_images([photo_of(f) for f in files])
    cluster_paths = [f"/mnt/archive/{f.name}" for f in files]
    (tmp_path / "in").mkdir()
    model, dim = tiny_embedder.model_id, tiny_embedder.dim
    write_shard(tmp_path / "in" / "a.parquet", table_of(model, dim, cluster_paths, vectors))
    mapping = f"/mnt/archive={files[0].parent}"
    job = await import_dir(client, tmp_path / "in", path_map=[mapping])
    assert job["imported"] == 5 and job["path_map"] == [mapping]
    hits = (await get_json(client, "/search", image=str(files[2])))["results"]
    assert hits[0]["image"] == str(files[2])


async def test_export_then_import_round_trip(
    aiohttp_client: ClientFactory,
    config: Config,
    tiny_embedder: Embedder,
    photos: dict[str, Path],
    tmp_path: Path,
) -> None:
    first = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    await get_json(first, "/add", image=str(next(iter(photos.values())).parent))
    out = tmp_path / "export"
    report = await get_json(first, "/export", dir=str(out))
    assert (report["rows"], report["files"]) == (5, 1)
    assert (await get_json(first, "/export", status=409, dir=str(out)))["status"] == 409
    table = pq.read_table(out / "part-00000.parquet")
    assert table.schema.metadata[META_MODEL] == tiny_embedder.model_id.encode()
    assert all(len(h) == 64 for h in table.column("sha256").to_pylist())

    other = Config(**{**config.__dict__, "data_dir": tmp_path / "second"})
    second = await aiohttp_client(create_app(other, embedder=tiny_embedder))
    job = await import_dir(second, out)
    assert job["imported"] == 5
    for f in photos.values():
        a = (await get_json(first, "/search", image=str(f)))["results"]
        b = (await get_json(second, "/search", image=str(f)))["results"]
        assert [h["image"] for h in a] == [h["image"] for h in b]
        # float16 in SQLite on both sides, renormalised on import: equal to ~1e-5, never 1e-4
        assert np.allclose([h["distance"] for h in a], [h["distance"] for h in b], atol=1e-4)
    again = await get_json(second, "/add", image=str(next(iter(photos.values())).parent))
    assert again["skipped"] == 5


def die_after(manager: ImportManager, catalog: Catalog, puts: int) -> list[int]:
    """Make the import "die" after `puts` transactions (a shutdown leaving its job queued); the
    list returned gets each transaction's row count."""
    put, sizes = catalog.put, []

    def put_then_die(items: Any, *rest: Any) -> Any:
        sizes.append(len(items))
        if len(sizes) == puts:  # this transaction still commits
            manager._closing = True
            for job in manager.records.kept():
                job.stop.set()
        return put(items, *rest)

    catalog.put = put_then_die  # type: ignore[method-assign]
    return sizes


def left_running(manager: ImportManager, data: Path, job: ImportJob) -> dict[str, Any]:
    """Once the "dead" import has stopped: its progress record as kill -9 leaves it (running)."""
    assert job.ended.wait(30)
    manager._worker.shutdown()
    path = data / "imports" / f"{job.id}.json"
    record: dict[str, Any] = json.loads(path.read_text())
    record["state"] = "running"
    path.write_text(json.dumps(record))
    return record


def niceness(native_id: int | None = None) -> int:
    """A thread's nice value (the calling thread's by default): per thread on Linux."""
    return os.getpriority(os.PRIO_PROCESS, native_id or threading.get_native_id())


def test_an_import_and_the_index_worker_yield_the_cpu_to_requests(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """The writer, reader and encoder of an import and the index's worker run niced (requests
    get the CPU first); the threads that start them keep their priority."""
    dim, mine = tiny_embedder.dim, niceness()
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [f"/lib/{i:03}.jpg" for i in range(30)]
    vectors = np.random.default_rng(0).normal(size=(30, dim))
    write_shard(folder / "s.parquet", table_of(tiny_embedder.model_id, dim, paths, vectors))
    (tmp_path / "data").mkdir()
    catalog = Catalog(tmp_path / "data", tiny_embedder.model_id, dim)
    rows = ingester(catalog, tiny_embedder)
    seen: dict[str, set[int]] = {}

    def recorded(step: str, fn: Any) -> Any:
        seen[step] = set()

        def call(*args: Any, **kwargs: Any) -> Any:
            seen[step].add(niceness())
            return fn(*args, **kwargs)

        return call

    for step in ("check_embedded", "encode_checked", "add_embedded"):
        setattr(rows, step, recorded(step, getattr(rows, step)))
    manager = ImportManager(rows, tmp_path / "data", batch_rows=10)
    job = manager.submit(folder)
    assert job.ended.wait(30) and job.state == "done" and job.imported == 30
    assert all(seen.values()), seen
    assert set().union(*seen.values()) == {max(BACKGROUND_NICE, mine)}
    worker = catalog.index._worker.native_id
    assert worker is not None and niceness(worker) == max(BACKGROUND_NICE, mine)
    assert niceness() == mine
    manager.close()
    catalog.close()


def test_import_resumes_after_a_crash_without_duplicates(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    dim = tiny_embedder.dim
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for s in range(2):
        paths = [f"/lib/{s}/{i:03}.jpg" for i in range(50)]
        vectors = rng.normal(size=(50, dim))
        write_shard(folder / f"s{s}.parquet", table_of(tiny_embedder.model_id, dim, paths, vectors))
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, dim)
    manager = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=10)
    die_after(manager, catalog, 4)
    job = manager.submit(folder)
    record = left_running(manager, data, job)
    assert 0 < record["shards"]["s0.parquet"] < 50
    catalog.close()

    catalog = Catalog(data, tiny_embedder.model_id, dim)
    resumed = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=10)
    job2 = resumed.get(job.id)
    assert job2.ended.wait(30)
    assert (job2.state, job2.done, job2.total) == ("done", 100, 100)
    assert catalog.store.count() == 100 == len(catalog.index)
    assert job2.imported == 100  # the count carries over the resume
    resumed.close()
    catalog.close()


def test_one_pipeline_runs_through_every_shard_and_past_a_damaged_one(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """The next shard's first batch is checked while the last one's is still being written
    (the pipeline never drains between shards), on the same reading thread; a damaged shard
    in between is reported in its place and the one after it imported."""
    dim, model = tiny_embedder.dim, tiny_embedder.model_id
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("s0", "s1", "s2"):
        paths = [f"/lib/{name}/{i:02}.jpg" for i in range(30)]
        write_shard(
            folder / f"{name}.parquet", table_of(model, dim, paths, rng.normal(size=(30, dim)))
        )
    damaged = bytearray((folder / "s1.parquet").read_bytes())
    damaged[100:1100] = bytes(1000)
    (folder / "s1.parquet").write_bytes(bytes(damaged))
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, model, dim)
    manager = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=10)
    events: list[tuple[str, str]] = []
    readers: set[threading.Thread] = set()
    check, put = manager._check, catalog.put

    def watched_check(item: Any) -> Any:
        readers.add(threading.current_thread())
        if isinstance(item, Group):
            events.append(("checked", item.parts[0][1].paths[0]))
        return check(item)

    def slow_put(items: Any, *rest: Any) -> Any:
        time.sleep(0.1)
        done = put(items, *rest)
        events.append(("written", items.paths[0]))
        return done

    manager._check = watched_check  # type: ignore[method-assign]
    catalog.put = slow_put  # type: ignore[method-assign]
    job = manager.submit(folder)
    assert job.ended.wait(30)
    assert (job.state, job.imported, job.failed, job.done) == ("done", 60, 30, 90)
    assert job.errors[0]["file"] == str(folder / "s1.parquet")
    assert len(readers) == 1  # one reading thread for the whole job
    last_of_s0 = events.index(("written", "/lib/s0/20.jpg"))
    assert events.index(("checked", "/lib/s2/00.jpg")) < last_of_s0
    assert catalog.store.count() == 60
    manager.close()
    catalog.close()


def test_small_shards_are_written_in_groups_and_resume_per_shard(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """Shards of 7 rows (one with a bad row) are written 14 rows a transaction, every shard's
    progress recorded, bad rows reported with their own file and row; a crash after two
    transactions resumes to the same library, without duplicates."""
    dim, model = tiny_embedder.dim, tiny_embedder.model_id
    rng = np.random.default_rng(4)
    folder = tmp_path / "in"
    folder.mkdir()
    for s in range(12):
        vectors = rng.normal(size=(7, dim))
        if s == 5:
            vectors[3] = 0.0  # row 3 of s05: a zero vector
        paths = [f"/lib/{s:02}/{i}.jpg" for i in range(7)]
        write_shard(folder / f"s{s:02}.parquet", table_of(model, dim, paths, vectors))
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, model, dim)
    manager = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=20)
    sizes = die_after(manager, catalog, 2)
    job = manager.submit(folder)
    record = left_running(manager, data, job)
    assert sizes == [14, 14]  # two shards a transaction
    assert record["shards"] == {f"s{s:02}.parquet": 7 if s < 4 else 0 for s in range(12)}
    catalog.close()

    catalog = Catalog(data, model, dim)
    resumed = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=20)
    again = resumed.get(job.id)
    assert again.ended.wait(30)
    assert (again.state, again.done, again.imported, again.failed) == ("done", 84, 83, 1)
    (error,) = again.errors
    assert (error["file"], error["row"]) == (str(folder / "s05.parquet"), 3)
    assert catalog.store.count() == 83 == len(catalog.index)
    assert all(rows == 7 for rows in again.shards.values())
    resumed.close()
    catalog.close()


def test_groups_join_consecutive_batches_up_to_the_rows_and_stop_at_an_unreadable() -> None:
    def part(name: str, good: int, bad: int = 0) -> tuple[ShardInfo, RowBatch]:
        info = ShardInfo(Path(f"/in/{name}.parquet"), "m", 4, good + bad)
        vectors = np.ones((good, 4), np.float32)
        batch = RowBatch(list(range(good)), [f"/{name}/{i}" for i in range(good)], vectors)
        batch.bad = [BadRow(str(info.path), good + i, "bad") for i in range(bad)]
        batch.facts = {"size": [1] * good} if name != "c" else {}
        batch.extras = [{"album": name}] * good if name == "a" else []  # metadata in a only
        return info, batch

    broken = Unreadable(part("x", 0)[0], OSError("damaged"))
    items = [part("a", 5), part("b", 3, 2), part("c", 12), part("d", 3), broken, part("e", 25)]
    out = list(groups(iter(items), 10))
    shape = [x if isinstance(x, Unreadable) else [i.path.stem for i, _ in x.parts] for x in out]
    assert shape == [["a", "b"], ["c"], ["d"], broken, ["e"]]
    first = out[0]
    assert isinstance(first, Group) and first.rows == 10
    joined = first.batch()
    assert joined.paths == [f"/a/{i}" for i in range(5)] + [f"/b/{i}" for i in range(3)]
    assert joined.vectors.shape == (8, 4) and [b.row for b in joined.bad] == [3, 4]
    assert joined.facts == {"size": [1] * 8}
    assert joined.extras == [{"album": "a"}] * 5 + [{}] * 3  # a row each, b's rows empty
    assert isinstance(out[1], Group) and out[1].batch().facts == {}  # c alone, no size column
    mixed = Group([part("a", 2), part("c", 2)])
    assert mixed.batch().facts == {"size": [1, 1, None, None]}
    assert Group([part("b", 2), part("c", 2)]).batch().extras == []  # no metadata anywhere


async def test_import_job_lists_and_cancels(
    client: Client, tmp_path: Path, tiny_embedder: Embedder
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [f"/lib/{i}.jpg" for i in range(20)]
    dim = tiny_embedder.dim
    table = table_of(tiny_embedder.model_id, dim, paths, np.ones((20, dim)))
    write_shard(folder / "a.parquet", table)
    resp = await client.post("/import", json={"dir": str(folder)})
    body = await resp.json()
    assert resp.status == 202 and resp.headers["Location"] == f"/import/{body['id']}"
    for _ in range(500):
        job = await get_json(client, f"/import/{body['id']}")
        if job["state"] == "done":
            break
        await asyncio.sleep(0.02)
    assert job["imported"] == 20 and job["vectors_per_s"] > 0
    listed = await get_json(client, "/import")
    assert [j["id"] for j in listed["imports"]] == [body["id"]]
    assert (await get_json(client, "/import/nope", status=404))["status"] == 404
    cancelled = await client.delete(f"/import/{body['id']}")
    assert (await cancelled.json())["state"] == "done"


def test_extra_columns_are_read_as_a_dict_per_row(tmp_path: Path) -> None:
    from imgsearch.bulk.format import read_batches, shard_info

    table = table_of("m", 4, ["/a.jpg", "/b.jpg"], np.eye(2, 4)).append_column(
        "album", pa.array(["summer", None])
    )
    table = table.append_column("stars", pa.array([5, 3]))
    write_shard(tmp_path / "x.parquet", table)
    (batch,) = read_batches(shard_info(tmp_path / "x.parquet"))
    assert batch.extras == [{"album": "summer", "stars": 5}, {"album": None, "stars": 3}]
    assert batch.paths == ["/a.jpg", "/b.jpg"] and batch.rows == [0, 1]


async def test_a_damaged_shard_is_reported_and_the_others_imported(
    client: Client, tmp_path: Path, tiny_embedder: Embedder
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    model, dim = tiny_embedder.model_id, tiny_embedder.dim
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        paths = [f"/lib/{name}/{i}.jpg" for i in range(200)]
        write_shard(
            folder / f"{name}.parquet", table_of(model, dim, paths, rng.normal(size=(200, dim)))
        )
    damaged = bytearray((folder / "a.parquet").read_bytes())
    damaged[100:2100] = bytes(2000)  # the first data pages; the footer is intact
    (folder / "a.parquet").write_bytes(bytes(damaged))
    job = await import_dir(client, folder)
    assert (job["state"], job["imported"], job["failed"], job["done"]) == ("done", 200, 200, 400)
    (error,) = job["errors"]
    assert error["file"] == str(folder / "a.parquet") and "cannot read" in error["error"]
    assert (await get_json(client, "/stats"))["images"] == 200


def test_cancel_keeps_what_was_written_and_a_rerun_skips_it(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    import time

    dim = tiny_embedder.dim
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [f"/lib/{i:03}.jpg" for i in range(100)]
    vectors = np.random.default_rng(2).normal(size=(100, dim))
    write_shard(folder / "a.parquet", table_of(tiny_embedder.model_id, dim, paths, vectors))
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, dim)
    manager = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=10)
    original = catalog.put

    def slow_put(items: Any, *rest: Any) -> Any:
        time.sleep(0.1)
        return original(items, *rest)

    catalog.put = slow_put  # type: ignore[method-assign]
    job = manager.submit(folder)
    while job.done < 20:
        time.sleep(0.01)
    cancelled = manager.cancel(job.id)
    assert cancelled.state == "cancelled" and 20 <= cancelled.done < 100
    assert catalog.store.count() == cancelled.imported == cancelled.done
    catalog.put = original  # type: ignore[method-assign]
    rerun = manager.submit(folder)
    assert rerun.ended.wait(30)
    assert (rerun.state, rerun.skipped, rerun.imported) == ("done", job.done, 100 - job.done)
    assert catalog.store.count() == 100
    manager.close()
    catalog.close()


async def test_import_and_export_stay_inside_allow_root(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    limited = Config(**{**config.__dict__, "allow_roots": (root,)})
    client = await aiohttp_client(create_app(limited, embedder=tiny_embedder))
    body = await get_json(client, "/export", status=403, dir=str(tmp_path / "out"))
    assert body["status"] == 403 and not (tmp_path / "out").exists()
    assert (await import_dir(client, tmp_path, 403))["status"] == 403
    assert (await get_json(client, "/export", dir=str(root / "out")))["rows"] == 0


def good_rows(n: int) -> Checked:
    """A stand-in for n checked rows."""
    facts = [FileFacts(f"/p/{i}", 1, 1, f"h{i}", 1, 1) for i in range(n)]
    return Checked(Rows.of_facts(facts, np.ones((n, 4), np.float32)), [])


def test_batches_are_read_encoded_and_written_in_order_on_their_own_threads() -> None:
    """The import's pipeline: each batch checked on one thread, encoded on one of
    ENCODERS others (niced, each with its share of the cores for FAISS's OpenMP team),
    handed back in file order whatever each step takes; a read error reaches the writer
    after the batches before it."""
    import faiss

    rng = random.Random(0)
    threads: dict[str, set[str]] = {"read": set(), "check": set(), "encode": set()}
    teams: set[tuple[int, int]] = set()  # each encoding's (OpenMP threads, nice)

    def batches() -> Iterator[RowBatch]:
        for n in range(12):
            threads["read"].add(threading.current_thread().name)
            if n == 9:
                raise OSError("damaged page")
            yield RowBatch(rows=[n], paths=[f"/p/{n}"])

    def check(batch: RowBatch) -> Checked | None:
        threads["check"].add(threading.current_thread().name)
        time.sleep(rng.uniform(0, 0.01))
        return None if batch.rows[0] == 4 else good_rows(batch.rows[0])  # 4: no good rows

    def encode(checked: Checked) -> Checked:
        threads["encode"].add(threading.current_thread().name)
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        teams.add((faiss.omp_get_max_threads(), nice))
        time.sleep(rng.uniform(0.005, 0.015))
        return good_rows(checked.good * 10)

    seen, mine = [], faiss.omp_get_max_threads()
    try:
        for batch, checked in ahead(batches(), check, encode, threading.Event()):
            seen.append((batch.rows[0], None if checked is None else checked.good))
            time.sleep(rng.uniform(0, 0.01))
    except OSError as exc:
        assert "damaged page" in str(exc)
    else:
        raise AssertionError("the read error was lost")
    assert seen == [(n, None if n == 4 else n * 10) for n in range(9)]
    me = threading.current_thread().name
    assert threads["read"] == threads["check"] and len(threads["check"]) == 1
    encoders = min(ENCODERS, os.cpu_count() or 1)
    assert len(threads["encode"]) == encoders and me not in threads["check"] | threads["encode"]
    assert not threads["check"] & threads["encode"]
    nice = max(BACKGROUND_NICE, os.getpriority(os.PRIO_PROCESS, 0))
    assert teams == {(max(1, (os.cpu_count() or 1) // encoders), nice)}
    assert faiss.omp_get_max_threads() == mine  # the caller's team as it was


def test_a_stop_ends_the_batches_ahead_without_reading_or_encoding_more() -> None:
    """Once the stop is set (a shutdown, a cancel), `ahead` hands back nothing more: batches
    not yet read are not read, batches read but not yet encoded are not encoded; only the
    encodings already under way are waited for, so a stop does not wait for IN_FLIGHT more
    batches (tens of seconds at 1280-d)."""
    stop = threading.Event()
    read: list[int] = []
    encoded: list[int] = []

    def batches() -> Iterator[RowBatch]:
        for n in range(50):
            read.append(n)
            yield RowBatch(rows=[n], paths=[f"/p/{n}"])

    def encode(checked: Checked) -> Checked:
        encoded.append(checked.good)
        time.sleep(0.05)
        return checked

    seen = []
    for batch, _ in ahead(batches(), lambda b: good_rows(b.rows[0]), encode, stop):
        seen.append(batch.rows[0])
        stop.set()  # after the first batch (the writer itself would stop there)
    # only what was read or encoded before the stop comes back, in order, then the end
    assert seen == list(range(len(seen))) and len(seen) <= 1 + IN_FLIGHT
    assert len(encoded) <= 1 + IN_FLIGHT and len(read) <= 2 + IN_FLIGHT
