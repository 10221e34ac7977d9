"""Bulk imports of shards as other tools write them (pandas' float columns, polars' large
lists, text cells, odd paths, repeated paths), every row accounted for; and the lives of
import and export jobs: cancelled while queued, at a shutdown, with their folder changed
under them, into folders that cannot be made, of an empty library."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.bulk.exports import ExportManager
from imgsearch.bulk.format import shard_info, table_of, write_shard
from imgsearch.bulk.imports import ImportJob, ImportManager, Served
from imgsearch.catalog import Catalog
from imgsearch.embedders import Embedder
from imgsearch.errors import BadRequest

from .helpers import TINY_MODEL, ingester

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def manager(tmp_path: Path, tiny_embedder: Embedder) -> Iterator[tuple[Catalog, ImportManager]]:
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    imports = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=5)
    yield catalog, imports
    imports.close()
    catalog.close()


def shard(
    folder: Path, embedder: Embedder, paths: list[str], name: str = "a.parquet",
    columns: dict[str, pa.Array] | None = None, seed: int = 0,
) -> Path:  # fmt: skip
    """A shard of random vectors for `paths`, with `columns` in place of (or beside) the
    format's own."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.random.default_rng(seed).normal(size=(len(paths), embedder.dim))
    table = table_of(embedder.model_id, embedder.dim, paths, vectors)
    for key, column in (columns or {}).items():
        table = table.drop_columns([key]) if key in table.column_names else table
        table = table.append_column(key, column)
    write_shard(folder / name, table)
    return folder / name


def ended(job: ImportJob) -> dict[str, Any]:
    assert job.ended.wait(60)
    shown = job.as_json()
    assert shown["imported"] + shown["skipped"] + shown["failed"] == shown["done"], shown
    return shown


def stored(catalog: Catalog) -> dict[str, tuple[Any, ...]]:
    rows = catalog.store.db.reader().execute(
        "SELECT path, size, typeof(size), mtime_ns, width FROM images"
    )
    return {path: tuple(rest) for path, *rest in rows}


def slowed(catalog: Catalog, seconds: float) -> Callable[[], None]:
    """Each write of the catalog made `seconds` slower; returns the undo."""
    put = catalog.put

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return put(*args, **kwargs)

    catalog.put = slow  # type: ignore[method-assign]
    return lambda: setattr(catalog, "put", put)


def test_paths_only_absolute_or_http_and_normalised(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    catalog, imports = manager
    paths = ["/lib/./a//b.jpg", "s3://bucket/c.jpg", "HTTPS://x/d.jpg", "rel/x://y.jpg"]
    paths += ["https://x/e.jpg", "/lib/f/../g.jpg"]
    shard(tmp_path / "in", tiny_embedder, paths)
    shown = ended(imports.submit(tmp_path / "in"))
    assert (shown["state"], shown["imported"], shown["failed"]) == ("done", 3, 3)
    assert sorted(stored(catalog)) == ["/lib/a/b.jpg", "/lib/g.jpg", "https://x/e.jpg"]
    assert [(e["row"], "http(s) URL" in e["error"]) for e in shown["errors"]] == [
        (1, True), (2, True), (3, True),
    ]  # fmt: skip
    assert all(e["file"].endswith("a.parquet") for e in shown["errors"])


def test_fact_columns_of_other_types_are_converted_or_unknown(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """pandas writes an integer column with gaps as float64 with NaN; a CSV turned into
    Parquet holds text: the cells that say a number are that number, the others unknown (as
    a null is), and the job goes on (it failed at its first batch, storing nothing, or stored
    the text, which failed every export after)."""
    catalog, imports = manager
    paths = [f"/lib/{i}.jpg" for i in range(4)]
    columns = {
        "size": pa.array([10.0, float("nan"), 12.5, 13.0], pa.float64()),
        "mtime_ns": pa.array(["1700000000000000000", "1.2 MB", None, " 7 "], pa.string()),
        "width": pa.array([640, 2**40, -1, 3], pa.int64()),  # (beyond int32: unknown)
    }
    shard(tmp_path / "in", tiny_embedder, paths, columns=columns)
    shown = ended(imports.submit(tmp_path / "in"))
    assert (shown["state"], shown["imported"], shown["failed"]) == ("done", 4, 0)
    assert stored(catalog) == {
        "/lib/0.jpg": (10, "integer", 1700000000000000000, 640),
        "/lib/1.jpg": (-1, "integer", -1, 0),
        "/lib/2.jpg": (-1, "integer", -1, -1),
        "/lib/3.jpg": (13, "integer", 7, 3),
    }


def test_vector_columns_as_other_tools_write_them(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """polars writes large lists, others integers or float64: all read; a list of text is
    refused with the folder (400) before anything is written, as a fixed size other than
    the schema's dimension is."""
    catalog, imports = manager
    dim = tiny_embedder.dim
    rows = np.random.default_rng(1).normal(size=(3, dim))
    columns = {"vector": pa.array(rows.tolist(), pa.large_list(pa.float64()))}
    shard(tmp_path / "large", tiny_embedder, ["/a/0.jpg", "/a/1.jpg", "/a/2.jpg"], columns=columns)
    shown = ended(imports.submit(tmp_path / "large"))
    assert (shown["state"], shown["imported"]) == ("done", 3)
    found = catalog.vectors(range(1, 4))
    assert np.allclose(found[1], rows[0] / np.linalg.norm(rows[0]), atol=1e-3)
    texts = {"vector": pa.array([["x"] * dim], pa.list_(pa.string()))}
    shard(tmp_path / "text", tiny_embedder, ["/b/0.jpg"], columns=texts)
    with pytest.raises(BadRequest, match="vector must be a list of floats, got list<"):
        imports.submit(tmp_path / "text")
    flat = pa.array(np.ones(dim + 1, np.float32))
    wrong = {"vector": pa.FixedSizeListArray.from_arrays(flat, dim + 1)}
    shard(tmp_path / "wide", tiny_embedder, ["/c/0.jpg"], columns=wrong)
    with pytest.raises(BadRequest, match=f"vector holds {dim + 1} values, imgsearch.dim says"):
        imports.submit(tmp_path / "wide")
    assert len(stored(catalog)) == 3


def test_a_path_repeated_in_a_batch_is_one_image_and_the_earlier_row_is_reported(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    catalog, imports = manager
    shard(tmp_path / "in", tiny_embedder, ["/d/x.jpg", "/d/y.jpg", "/d/x.jpg"])
    shown = ended(imports.submit(tmp_path / "in"))
    assert (shown["imported"], shown["failed"], shown["done"]) == (2, 1, 3)
    (error,) = shown["errors"]
    assert error["row"] == 0 and "the same path as row 2" in error["error"]
    assert sorted(stored(catalog)) == ["/d/x.jpg", "/d/y.jpg"]


def test_a_queued_import_cancelled_ends_at_once_and_stays_cancelled_after_a_shutdown(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """DELETE of a queued import waited for the import before it (up to 60 s), and a
    shutdown meanwhile turned the cancel into "queued": the next start imported it."""
    shard(tmp_path / "a", tiny_embedder, [f"/lib/a/{i}.jpg" for i in range(30)])
    shard(tmp_path / "b", tiny_embedder, [f"/lib/b/{i}.jpg" for i in range(5)], seed=1)
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    imports = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=5)
    undo = slowed(catalog, 0.3)  # a: 6 batches, ~2 s
    first, second = imports.submit(tmp_path / "a"), imports.submit(tmp_path / "b")
    start = time.monotonic()
    assert imports.cancel(second.id).state == "cancelled"
    assert time.monotonic() - start < 1.0
    imports.close()  # a stops after its batch: queued, to be resumed
    undo()
    assert (first.state, second.state) == ("queued", "cancelled")
    catalog.close()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    imports = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=5)
    assert ended(imports.get(first.id))["state"] == "done"
    assert imports.get(second.id).as_json()["state"] == "cancelled"
    assert not any(path.startswith("/lib/b/") for path in stored(catalog))
    imports.close()
    catalog.close()


def test_a_job_reads_its_own_shards_and_reports_one_gone(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """A shard dropped into the folder after the import was queued is not the job's (a
    half-written one failed the whole job); one of the job's that is gone when it runs (or
    at a resume) has its rows counted failed with a reason, not left out of the count."""
    catalog, imports = manager
    folder = tmp_path / "in"
    shard(folder, tiny_embedder, [f"/e/{i}.jpg" for i in range(10)], "a.parquet")
    shard(folder, tiny_embedder, [f"/f/{i}.jpg" for i in range(7)], "b.parquet", seed=2)
    gate, undo = threading.Event(), slowed(catalog, 0.0)
    blocker = shard(tmp_path / "first", tiny_embedder, ["/g/0.jpg"])
    put = catalog.put
    catalog.put = lambda *a, **k: (gate.wait(30), put(*a, **k))[1]  # type: ignore[method-assign]
    ahead = imports.submit(blocker.parent)
    job = imports.submit(folder)
    (folder / "zz-partial.parquet").write_bytes(b"PAR1 not a whole file")
    (folder / "b.parquet").unlink()
    gate.set()
    undo()
    assert ended(ahead)["state"] == "done"
    shown = ended(job)
    assert (shown["state"], shown["imported"], shown["failed"], shown["done"]) == (
        "done", 10, 7, 17,
    )  # fmt: skip
    (error,) = shown["errors"]
    assert error["file"].endswith("b.parquet") and "not a readable Parquet file" in error["error"]


def test_a_resumed_job_whose_shard_vanished_says_so(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    folder = tmp_path / "in"
    shard(folder, tiny_embedder, [f"/a/{i}.jpg" for i in range(10)], "a.parquet")
    shard(folder, tiny_embedder, [f"/b/{i}.jpg" for i in range(10)], "b.parquet", seed=1)
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    imports = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=5)
    record = ended(imports.submit(folder))
    imports.close()
    catalog.close()
    # as a crash leaves it: a.parquet done, b.parquet not begun; b then deleted
    record.update(state="running", shards={"a.parquet": 10, "b.parquet": 0}, imported=10)
    saved = json.loads((data / "imports" / f"{record['id']}.json").read_text())
    saved.update({k: record[k] for k in ("state", "shards", "imported")}, finished=None)
    (data / "imports" / f"{record['id']}.json").write_text(json.dumps(saved))
    (folder / "b.parquet").unlink()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    imports = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=5)
    shown = ended(imports.get(record["id"]))
    assert (shown["state"], shown["done"], shown["total"], shown["failed"]) == ("done", 20, 20, 10)
    assert shown["errors"][-1]["file"].endswith("b.parquet")
    imports.close()
    catalog.close()


def test_shards_named_by_an_earlier_id_of_the_weights(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """Shards an earlier version wrote name the checkpoint by its file (`.../FILE NAME`), which
    any checkpoint of that name had: taken only when the user says they are this one's (and
    still at a resume); another spelling of the daemon's open_clip tag is always taken."""
    dim = tiny_embedder.dim
    content = f"open_clip/{TINY_MODEL}/sha256:0123456789abcdef"
    by_file = f"open_clip/{TINY_MODEL}/open_clip_pytorch_model.bin"
    vectors = np.random.default_rng(0).normal(size=(10, dim))
    for name, model_id in (("a", by_file), ("b", by_file), ("other", f"{by_file}.old")):
        (tmp_path / name).mkdir()
        table = table_of(model_id, dim, [f"/{name}/{i}.jpg" for i in range(10)], vectors)
        write_shard(tmp_path / name / "s.parquet", table)
    data = tmp_path / "data"
    data.mkdir()

    def opened() -> tuple[Catalog, ImportManager]:
        catalog = Catalog(data, content, dim, aliases=(by_file,))
        return catalog, ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=5)

    catalog, imports = opened()
    with pytest.raises(BadRequest, match=r"earlier versions gave .*\"earlier_model\": true"):
        imports.submit(tmp_path / "a")
    with pytest.raises(BadRequest, match="holds vectors of model .*bin.old"):
        imports.submit(tmp_path / "other", earlier_model=True)
    shown = ended(imports.submit(tmp_path / "a", earlier_model=True))
    assert (shown["state"], shown["imported"], shown["earlier_model"]) == ("done", 10, True)
    # a crash before b's rows: resumed with the user's word kept
    job = imports.submit(tmp_path / "b", earlier_model=True)
    ended(job)
    imports.close()
    catalog.close()
    record = data / "imports" / f"{job.id}.json"
    saved = json.loads(record.read_text())
    saved.update(state="running", shards={"s.parquet": 0}, imported=0, finished=None)
    record.write_text(json.dumps(saved))
    catalog, imports = opened()
    assert len(catalog.remove_tree("/b")) == 10
    shown = ended(imports.get(job.id))
    assert (shown["state"], shown["imported"], shown["failed"]) == ("done", 10, 0), shown
    assert sum(path.startswith("/b/") for path in stored(catalog)) == 10
    imports.close()
    catalog.close()

    spelled = Served("open_clip/ViT-B-32/laion2b_s34b_b79k", dim)
    table = table_of("open_clip/ViT-B-32/LAION2B-S34B-B79K", dim, ["/t.jpg"], vectors[:1])
    write_shard(tmp_path / "t.parquet", table)
    shouted = shard_info(tmp_path / "t.parquet")
    assert spelled.refusal(shouted, earlier_model=False) is None
    assert Served(by_file.replace(".bin", ".pt"), dim).refusal(shouted, False) is not None


def test_rows_no_file_system_holds_odd_metadata_and_odd_scales_never_fail_a_job(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """A NUL in a path was stored, and the next row of the same content failed the job; a
    timestamp Python cannot hold (the year 10000) failed the whole job, every file; a vector
    of values near 1e19 or 1e-23 was refused as not finite or all zeros (squared in float32)."""
    catalog, imports = manager
    dim = tiny_embedder.dim
    paths = ["/p/a.jpg", "/p/bad\x00name.jpg", f"/p/{'n' * 300}.jpg", "/p/big.jpg", "/p/tiny.jpg"]
    vectors = np.random.default_rng(0).normal(size=(5, dim)).astype(np.float32)
    vectors[3] *= np.float32(1e19)
    vectors[4] *= np.float32(1e-23)
    in_2020, in_10000 = 1_577_836_800 * 10**6, 253_402_300_800 * 10**6 + 1
    far = pa.array([in_2020] * 4 + [in_10000], pa.int64()).cast(pa.timestamp("us"))
    shard(tmp_path / "in", tiny_embedder, paths, columns={"taken": far})
    table = pq.read_table(tmp_path / "in" / "a.parquet")
    table = table.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel(), pa.float32()), dim
    ))  # fmt: skip
    write_shard(tmp_path / "in" / "a.parquet", table)
    shown = ended(imports.submit(tmp_path / "in"))
    assert (shown["state"], shown["imported"], shown["failed"]) == ("done", 3, 2), shown
    reasons = {e["row"]: e["error"] for e in shown["errors"]}
    assert "NUL" in reasons[1] and "at most 255" in reasons[2]
    assert sorted(stored(catalog)) == ["/p/a.jpg", "/p/big.jpg", "/p/tiny.jpg"]
    taken = catalog.store.metadata.get(catalog.store.ids().tolist())
    assert sorted(str(m.get("taken", ""))[:5] for m in taken.values()) == [
        "10000",
        "2020-",
        "2020-",
    ]  # fmt: skip (the last as text: no Python datetime holds it)


def test_a_shard_rewritten_after_the_import_was_queued_is_reported_not_half_read(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    catalog, imports = manager
    gate, undo = threading.Event(), slowed(catalog, 0.0)
    put = catalog.put
    catalog.put = lambda *a, **k: (gate.wait(30), put(*a, **k))[1]  # type: ignore[method-assign]
    ahead = imports.submit(shard(tmp_path / "first", tiny_embedder, ["/g/0.jpg"]).parent)
    folder = tmp_path / "in"
    shard(folder, tiny_embedder, [f"/e/{i}.jpg" for i in range(10)])
    job = imports.submit(folder)
    shard(folder, tiny_embedder, [f"/f/{i}.jpg" for i in range(4)], seed=3)  # rewritten
    gate.set()
    undo()
    ended(ahead)
    shown = ended(job)
    assert (shown["done"], shown["total"], shown["imported"], shown["failed"]) == (10, 10, 0, 10)
    assert "changed since the import was queued" in shown["errors"][0]["error"]


def test_a_path_map_takes_the_paths_as_they_are_stored(
    manager: tuple[Catalog, ImportManager], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """`/mnt//a/2.jpg` is under `/mnt/a` and `/mnt/a/../b/4.jpg` is not: the map was applied
    to the text before it was made the stored path."""
    catalog, imports = manager
    rows = ["/mnt/a/1.jpg", "/mnt//a/2.jpg", "/mnt/./a/3.jpg", "/mnt/a/../b/4.jpg"]
    shard(tmp_path / "in", tiny_embedder, rows)
    ended(imports.submit(tmp_path / "in", path_map=["/mnt/./a/=/data/a"]))
    assert sorted(stored(catalog)) == [
        "/data/a/1.jpg", "/data/a/2.jpg", "/data/a/3.jpg", "/mnt/b/4.jpg",
    ]  # fmt: skip


def test_a_repeated_path_outside_the_allowed_folders_counts_each_row_once(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """Refused outside the roots once for each of its rows, then counted again as repeated:
    `imported + skipped + failed` came to more than `done`."""
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    rooted = ingester(catalog, tiny_embedder)
    rooted.allows_text = lambda path: path.startswith("/ok/")
    imports = ImportManager(rooted, data, batch_rows=20)
    try:
        rows = ["/ok/a.jpg", "/secret/x.jpg", "/secret/x.jpg", "/ok/b.jpg"]
        shown = ended(imports.submit(shard(tmp_path / "in", tiny_embedder, rows).parent))
        assert (shown["done"], shown["imported"], shown["failed"]) == (4, 2, 2), shown
        assert sorted(e["row"] for e in shown["errors"]) == [1, 2]
        assert not any("imported instead" in e["error"] for e in shown["errors"])
    finally:
        imports.close()
        catalog.close()


def test_a_row_group_too_big_for_the_memory_free_is_refused_before_anything_is_read(
    manager: tuple[Catalog, ImportManager],
    tiny_embedder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Arrow decodes a row group's list column whole: a file of one 10M-row group at 512-d
    took 20 GB before its first batch (the OOM killer ended the daemon)."""
    from imgsearch.bulk import format as shard_format
    from imgsearch.errors import ImgSearchError

    catalog, imports = manager
    rows = [f"/r/{i}.jpg" for i in range(1000)]
    table = pq.read_table(shard(tmp_path / "one", tiny_embedder, rows))
    assert shard_info(tmp_path / "one" / "a.parquet").group_bytes >= 1000 * tiny_embedder.dim * 4
    (tmp_path / "many").mkdir()
    write_shard(tmp_path / "many" / "a.parquet", table, row_group_size=100)
    group = shard_info(tmp_path / "many" / "a.parquet").group_bytes
    monkeypatch.setattr(shard_format, "GROUP_MARGIN_MB", 0)
    monkeypatch.setattr(shard_format, "BIG_GROUP_BYTES", 0)
    monkeypatch.setattr(shard_format, "available_mb", lambda: 2 * group / 1e6)
    with pytest.raises(ImgSearchError, match="row_group_size") as refused:
        imports.submit(tmp_path / "one")
    assert refused.value.status == 507 and stored(catalog) == {}
    assert ended(imports.submit(tmp_path / "many"))["imported"] == 1000


@pytest.mark.parametrize("start_row", [0, 2, 3, 7, 9, 10, 12])
def test_a_resume_reads_from_the_row_group_that_holds_its_row(
    tiny_embedder: Embedder, tmp_path: Path, start_row: int
) -> None:
    """The rows before `start_row` were decoded again, all of them, at every resume."""
    from imgsearch.bulk.format import read_batches

    paths = [f"/r/{i}.jpg" for i in range(10)]
    table = pq.read_table(shard(tmp_path / "in", tiny_embedder, paths))
    write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=3)
    info = shard_info(tmp_path / "in" / "a.parquet")
    batches = list(read_batches(info, start_row=start_row, batch_rows=2))
    assert [r for b in batches for r in b.rows] == list(range(start_row, 10))
    assert [p for b in batches for p in b.paths] == paths[start_row:]


def test_a_queued_export_cancelled_ends_at_once(tmp_path: Path, tiny_embedder: Embedder) -> None:
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, tiny_embedder.dim)
    exports = ExportManager(catalog, data)
    exports.command = [sys.executable, "-c", "import time; time.sleep(3)"]  # a slow export
    first, second = exports.submit(tmp_path / "one"), exports.submit(tmp_path / "two")
    start = time.monotonic()
    assert exports.cancel(second.id).state == "cancelled"
    assert time.monotonic() - start < 1.0
    exports.close()
    assert first.state == "interrupted" and second.state == "cancelled"
    catalog.close()


async def test_export_checks_its_folder_and_an_empty_library_round_trips(
    client: Client, tmp_path: Path
) -> None:
    for raw, status, said in [
        (str(tmp_path / "a\x00b"), 400, "NUL"),
        (str(tmp_path / "file" / "sub"), 400, "is not a folder"),
        ("relative/dir", 400, "absolute"),
    ]:
        (tmp_path / "file").write_text("x")
        resp = await client.get("/export", params={"dir": raw})
        assert resp.status == status and said in (await resp.json())["error"], raw
    resp = await client.post("/export?wait=1", json={"dir": str(tmp_path / "empty")})
    job = await resp.json()
    assert (resp.status, job["state"], job["files"]) == (200, "done", 1), job
    assert pq.read_table(tmp_path / "empty" / "part-00000.parquet").num_rows == 0
    resp = await client.post("/import?wait=1", json={"dir": str(tmp_path / "empty")})
    job = await resp.json()
    assert (resp.status, job["state"], job["total"]) == (200, "done", 0), job
    resp = await client.post("/import", json={"dir": str(tmp_path / "empty"), "wait": "yes"})
    assert resp.status == 400  # (in a JSON body: true or false)
    resp = await client.post("/import", json={"dir": str(tmp_path / "empty"), "earlier_model": 1})
    assert resp.status == 400 and "earlier_model" in (await resp.json())["error"]
