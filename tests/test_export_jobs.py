"""Export as a job: the store's float16 vectors written as they are, progress and cancel, a
staging folder that leaves nothing importable behind, interrupted exports after a restart.
A real daemon app over real SQLite, real photos, real Parquet files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.bulk.export import STAGING, write_library
from imgsearch.bulk.exports import ExportManager
from imgsearch.catalog import DB_FILE
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.store import FileFacts, NewImage, Store
from imgsearch.web import create_app
from imgsearch.web.keys import SERVICE

from .helpers import ClientFactory, get_json, photo, wait_for

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def library(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, photos: dict[str, Path]
) -> Client:
    client = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    await get_json(client, "/add", image=str(next(iter(photos.values())).parent))
    return client


def stored(config: Config) -> dict[str, bytes]:
    with sqlite3.connect(config.data_dir / DB_FILE) as db:
        return dict(db.execute("SELECT path, vector FROM images WHERE missing=0"))


def shard_rows(folder: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path)
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        out.update(zip(table.column("path").to_pylist(), vectors, strict=True))
    return out


async def post_export(client: Client, status: int = 202, **body: Any) -> Any:
    resp = await client.post("/export", json=body)
    got = await resp.json()
    assert resp.status == status, got
    return got


async def until_ended(client: Client, job_id: str) -> Any:
    for _ in range(400):
        job = await get_json(client, f"/export/{job_id}")
        if job["state"] not in {"queued", "running"}:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"export {job_id} never ended")


async def test_the_stores_float16_vectors_go_out_as_they_are(
    library: Client, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = await post_export(library, dir=str(out))
    assert job["state"] in {"queued", "running"} and (job["total"], job["kind"]) == (5, "export")
    done = await until_ended(library, job["id"])
    assert (done["state"], done["rows"], done["files"], done["done"]) == ("done", 5, 1, 5)
    table = pq.read_table(out / "part-00000.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float16(), tiny_embedder.dim)
    assert not (out / STAGING).exists()
    want = stored(config)
    got = shard_rows(out)
    assert set(got) == set(want)
    for path, vector in got.items():  # the bytes the store holds, not rounded again
        assert vector.astype(np.float16).tobytes() == want[path]
    listed = (await get_json(library, "/export"))["exports"]
    assert [j["id"] for j in listed] == [job["id"]]


async def test_shards_split_and_rows_of_older_versions_as_float16(
    library: Client, config: Config, tmp_path: Path
) -> None:
    service = library.server.app[SERVICE]
    with sqlite3.connect(config.data_dir / DB_FILE) as db:  # a row as an older version wrote it
        path, blob = db.execute("SELECT path, vector FROM images ORDER BY id LIMIT 1").fetchone()
        old = np.frombuffer(blob, np.float16).astype(np.float32)
        db.execute("UPDATE images SET vector=? WHERE path=?", (old.tobytes(), path))
    seen: list[tuple[int, int]] = []
    rows, files = await asyncio.to_thread(
        write_library, service.catalog.store, service.catalog.model_id, service.catalog.dim,
        tmp_path / "out", threading.Event(), lambda r, f: seen.append((r, f)), 2,
    )  # fmt: skip
    assert (rows, files) == (5, 3)
    assert seen[-1] == (5, 3) and [r for r, _ in seen] == sorted(r for r, _ in seen)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
    ]  # fmt: skip
    got = shard_rows(tmp_path / "out")
    assert got[path].astype(np.float16).tobytes() == old.astype(np.float16).tobytes()


# The export's child with a writer that waits at its first shard for a file to appear.
GATED_CHILD = """
import pathlib, sys, time
from imgsearch.bulk import export
gate, real = pathlib.Path(sys.argv.pop(1)), export.write_table
def gated(path, table):
    (gate / "entered").write_text(str(__import__("os").getpid()))
    while not (gate / "release").exists():
        time.sleep(0.01)
    real(path, table)
export.write_table = gated
sys.exit(export.main(sys.argv[1:]))
"""


def gated(library: Client, gate: Path) -> None:
    gate.mkdir()
    library.server.app[SERVICE].exports.command = [sys.executable, "-c", GATED_CHILD, str(gate)]


async def entered(gate: Path) -> int:
    """The gated child's pid, once it is writing its first shard."""
    for _ in range(600):
        if (gate / "entered").exists() and (pid := (gate / "entered").read_text()):
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError("the export's child never started writing")


async def test_a_cancelled_export_leaves_nothing_an_import_would_read(
    library: Client, tmp_path: Path
) -> None:
    gated(library, tmp_path / "gate")
    out = tmp_path / "out"
    job = await post_export(library, dir=str(out))
    child = await entered(tmp_path / "gate")
    assert child != os.getpid()  # the export runs in a process of its own
    running = await get_json(library, f"/export/{job['id']}")
    assert running["state"] == "running" and (out / STAGING).is_dir()
    # a second export into the same folder while this one runs: refused
    assert (await post_export(library, status=409, dir=str(out)))["status"] == 409
    cancel = asyncio.ensure_future(library.delete(f"/export/{job['id']}"))
    await asyncio.sleep(0.3)  # SIGTERM arrives while the shard is being written
    (tmp_path / "gate" / "release").touch()
    resp = await cancel
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "cancelled", body
    assert list(out.iterdir()) == []
    library.server.app[SERVICE].exports.command = [sys.executable, "-m", "imgsearch.bulk.export"]
    again = await until_ended(library, (await post_export(library, dir=str(out)))["id"])
    assert (again["state"], again["rows"]) == ("done", 5)


async def test_an_export_child_killed_outright_fails_and_leaves_nothing(
    library: Client, tmp_path: Path
) -> None:
    gated(library, tmp_path / "gate")
    out = tmp_path / "out"
    job = await post_export(library, dir=str(out))
    os.kill(await entered(tmp_path / "gate"), signal.SIGKILL)
    done = await until_ended(library, job["id"])
    assert done["state"] == "failed" and "status -9" in done["error"], done
    assert list(out.iterdir()) == []  # its staging folder cleared by the daemon


async def test_a_killed_exports_staging_folder_is_not_a_library(
    library: Client, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / STAGING).mkdir(parents=True)  # what kill -9 mid-export leaves
    (out / STAGING / "part-00000.parquet").write_bytes(b"half a shard")
    resp = await library.post("/import", json={"dir": str(out), "wait": True})
    assert resp.status == 404, await resp.json()  # no shard in the folder itself
    done = await get_json(library, "/export", dir=str(out))  # wait=true: answers when done
    assert (done["state"], done["rows"]) == ("done", 5)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]


async def test_bad_requests(library: Client, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    assert (await get_json(library, "/export", status=400, dir=""))["status"] == 400
    assert (await get_json(library, "/export", status=400, dir="rel/dir"))["status"] == 400
    assert await get_json(library, "/export", status=409, dir=str(tmp_path / "full"))
    assert await get_json(library, "/export", status=409, dir=str(tmp_path / "file"))
    assert await get_json(library, "/export", status=400, dir="/x", wait="maybe")
    await post_export(library, status=400, dir=str(tmp_path / "a"), wait="no")
    await post_export(library, status=400, wait=False)
    assert (await get_json(library, "/export/nope", status=404))["status"] == 404
    assert (await library.delete("/export/nope")).status == 404


def test_an_export_a_restart_stopped_shows_as_interrupted(config: Config, tmp_path: Path) -> None:
    folder = config.data_dir / "exports"
    folder.mkdir(parents=True)
    record = {
        "id": "abc", "kind": "export", "dir": str(tmp_path / "out"), "state": "running",
        "total": 10, "rows": 4, "files": 2, "created": 1.0, "started": 2.0, "finished": None,
        "error": None,
    }  # fmt: skip
    (folder / "abc.json").write_text(json.dumps(record))
    manager = ExportManager(None, config.data_dir)  # type: ignore[arg-type]
    try:
        job = manager.get("abc")
        assert job.state == "interrupted" and job.ended.is_set() and job.finished is not None
        assert json.loads((folder / "abc.json").read_text())["state"] == "interrupted"
    finally:
        manager.close()


def test_an_export_child_stops_when_its_daemon_dies(tmp_path: Path) -> None:
    """kill -9 of the daemon: Linux sends its export child SIGTERM, which stops it and clears
    its staging folder (no export outlives the daemon)."""
    store = Store(tmp_path / DB_FILE)
    vectors = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    facts = [FileFacts(f"/p/{i}.jpg", 1, 1, f"h{i}", 8, 8) for i in range(5)]
    store.images.upsert([NewImage(f, v) for f, v in zip(facts, vectors, strict=True)])
    store.close()
    gate, out = tmp_path / "gate", tmp_path / "out"
    gate.mkdir()
    child = [sys.executable, "-c", GATED_CHILD, str(gate), str(tmp_path / DB_FILE), "m", "16"]
    daemon = subprocess.Popen(  # a stand-in daemon: starts the child, then waits to be killed
        [sys.executable, "-c", "import os, subprocess, sys, time; "
         "subprocess.Popen(sys.argv[1:] + ['--parent', str(os.getpid())]); time.sleep(60)",
         *child, str(out)],
    )  # fmt: skip
    wait_for("the child writing", lambda: (gate / "entered").exists())
    pid = int((gate / "entered").read_text())
    assert (out / STAGING).is_dir()
    daemon.kill()
    daemon.wait()
    (gate / "release").touch()
    wait_for("the child to exit", lambda: _gone(pid))
    assert list(out.iterdir()) == []


def _gone(pid: int) -> bool:
    """The process has exited (an orphan is reaped by init; a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("rows_per_shard", [3, 100])
def test_an_export_is_one_snapshot_to_its_last_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows_per_shard: int
) -> None:
    """The rows' statement ended with its last row and the last shard's metadata was read
    after it: a removal or a metadata write meanwhile showed there (the only shard of a
    library under 100,000 images)."""
    from imgsearch.bulk import export

    store = Store(tmp_path / "db.sqlite", 8)
    rng = np.random.default_rng(0)
    images = [
        NewImage(FileFacts(f"/p/{i}.jpg", 10, 10, f"{i:064x}", 4, 4), rng.normal(size=8))
        for i in range(6)
    ]
    ids = store.images.upsert(images).ids
    store.metadata.replace({i: {"album": f"old{n}"} for n, i in enumerate(ids)})
    daemon = Store(tmp_path / "db.sqlite", 8)  # another connection: the daemon, writing
    made = export.shard_table
    shards: list[int] = []

    def shard_table(*args: Any) -> Any:
        shards.append(1)
        if len(shards) == 2 or rows_per_shard == 100:  # (the last shard being built)
            daemon.metadata.replace({ids[0]: {"album": "NEW"}, ids[5]: {"album": "NEW"}})
            daemon.images.remove_ids([ids[1], ids[4]])
        return made(*args)

    monkeypatch.setattr(export, "shard_table", shard_table)
    write_library(store, "m", 8, tmp_path / "out", threading.Event(), rows_per_shard=rows_per_shard)
    rows = {}
    for path in sorted((tmp_path / "out").glob("*.parquet")):
        table = pq.read_table(path).to_pydict()
        rows.update(zip(table["path"], table["album"], strict=True))
    assert rows == {f"/p/{n}.jpg": f"old{n}" for n in range(6)}
    daemon.close()
    store.close()


async def test_a_file_of_before_1970_keeps_its_time_through_a_round_trip(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """Its negative mtime went out as unknown: the next /add of the unchanged file, after an
    import, embedded it again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo("coffee", 160).save(folder / "old.jpg")
    in_1960 = -315_619_200_000_000_000
    os.utime(folder / "old.jpg", ns=(in_1960, in_1960))
    first = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    await get_json(first, "/add", image=str(folder))
    out = tmp_path / "out"
    assert (await get_json(first, "/export", dir=str(out)))["rows"] == 1
    assert pq.read_table(out / "part-00000.parquet").column("mtime_ns").to_pylist() == [in_1960]
    other = Config(**{**config.__dict__, "data_dir": tmp_path / "second"})
    second = await aiohttp_client(create_app(other, embedder=tiny_embedder))
    resp = await second.post("/import", json={"dir": str(out), "wait": True})
    assert (await resp.json())["imported"] == 1
    again = await get_json(second, "/add", image=str(folder))
    assert (again["added"], again["updated"], again["skipped"]) == (0, 0, 1)
