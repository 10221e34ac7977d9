"""Metadata through bulk import/export: extra shard columns become per-image metadata, and
export writes metadata back as string columns (a round trip keeps filters working)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.bulk.format import table_of, write_shard
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app

from .helpers import ClientFactory, get_json

Client = TestClient[web.Request, web.Application]


def shard(files: list[Path], embedder: Embedder, out: Path, **columns: pa.Array) -> Path:
    """A shard of the files' own vectors and facts, plus extra columns."""
    from imgsearch.images import decode

    images = [decode(f.read_bytes(), min_side=224, max_pixels=10**8).image for f in files]
    facts: dict[str, list[Any]] = {
        "size": [f.stat().st_size for f in files],
        "mtime_ns": [f.stat().st_mtime_ns for f in files],
    }
    vectors = embedder.embed_images(images)
    table = table_of(embedder.model_id, embedder.dim, [str(f) for f in files], vectors, facts)
    for name, values in columns.items():
        table = table.append_column(name.replace("__", ":"), values)
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "a.parquet", table)
    return out


async def import_dir(client: Client, folder: Path) -> Any:
    resp = await client.post("/import", json={"dir": str(folder), "wait": True})
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def metadata_of(client: Client, path: Path) -> Any:
    return (await get_json(client, "/image", image=str(path)))["metadata"]


async def found(client: Client, query: Path, where: str) -> list[str]:
    hits = await get_json(client, "/search", image=str(query), where=where, limit=10)
    return sorted(h["image"] for h in hits["results"])


async def test_extra_columns_become_typed_metadata_and_filters_see_them(
    client: Client, photos: dict[str, Path], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    files = sorted(photos.values())[:3]
    albums = pa.array(["summer", None, "summer"])
    stars = pa.array([5, 3, None], pa.int64())
    folder = shard(files, tiny_embedder, tmp_path / "shards", album=albums, stars=stars)
    job = await import_dir(client, folder)
    assert (job["imported"], job["failed"], job["errors"]) == (3, 0, [])
    assert await metadata_of(client, files[0]) == {"album": "summer", "stars": 5}
    assert await metadata_of(client, files[1]) == {"stars": 3}  # a null cell is no key
    assert await metadata_of(client, files[2]) == {"album": "summer"}
    assert await found(client, files[1], "album:summer") == [str(files[0]), str(files[2])]
    assert await found(client, files[0], "stars:3") == [str(files[1])]


async def test_a_refused_metadata_column_keeps_the_images_and_says_why(
    client: Client, photos: dict[str, Path], tiny_embedder: Embedder, tmp_path: Path
) -> None:
    files = sorted(photos.values())[:2]
    bad = pa.array(["x", None])  # a key with ':' can never be matched by where=KEY:VALUE
    job = await import_dir(client, shard(files, tiny_embedder, tmp_path / "s", a__b=bad))
    assert (job["imported"], job["failed"]) == (2, 0)
    assert len(job["errors"]) == 1 and job["errors"][0]["row"] == 0
    assert (
        "without its metadata" in job["errors"][0]["error"] and "':'" in job["errors"][0]["error"]
    )
    assert await metadata_of(client, files[0]) == {}
    assert await metadata_of(client, files[1]) == {}  # an all-null row: no metadata, no error


async def test_export_writes_metadata_columns_and_a_round_trip_keeps_filters(
    aiohttp_client: ClientFactory,
    config: Config,
    tiny_embedder: Embedder,
    photos: dict[str, Path],
    tmp_path: Path,
) -> None:
    first = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    files = sorted(photos.values())
    await get_json(first, "/add", image=str(files[0].parent))
    # A shop's `size` and `source` are named like format columns: they go out as `meta:size`
    # and `meta:source` (they were left out of exports, lost by a move to another daemon).
    # Every key's values keep their type where they all have one: booleans, integers (one
    # over 2**53 too), floats (an integer-valued one stays a float); mixed ones go out as text.
    given = {
        files[0]: {"sku": "A-1", "price": 12.5, "sale": True, "size": "XL", "n": 2**60, "w": 3.0},
        files[3]: {"sku": "B-2", "source": "catalogue", "n": -7, "lot": 3},
        files[4]: {"lot": "3b", "w": 1e300},
    }
    for path, metadata in given.items():
        resp = await first.post("/metadata", json={"image": str(path), "metadata": metadata})
        assert resp.status == 200, await resp.json()
    out = tmp_path / "export"
    assert (await get_json(first, "/export", dir=str(out)))["rows"] == 5
    table = pq.read_table(out / "part-00000.parquet")
    assert {"price", "sale", "sku"} <= set(table.schema.names)
    types = {n: table.schema.field(n).type for n in ("price", "sale", "sku", "n", "w", "lot")}
    assert types == {
        "price": pa.float64(), "sale": pa.bool_(), "sku": pa.string(), "n": pa.int64(),
        "w": pa.float64(), "lot": pa.string(),
    }  # fmt: skip
    rows = dict(zip(table.column("path").to_pylist(), table.to_pylist(), strict=True))
    assert (rows[str(files[0])]["price"], rows[str(files[0])]["sale"]) == (12.5, True)
    assert (rows[str(files[0])]["meta:size"], rows[str(files[3])]["meta:source"]) == (
        "XL",
        "catalogue",
    )
    assert rows[str(files[0])]["size"] == files[0].stat().st_size
    assert rows[str(files[1])]["sku"] is None

    other = Config(**{**config.__dict__, "data_dir": tmp_path / "second"})
    second = await aiohttp_client(create_app(other, embedder=tiny_embedder))
    assert (await import_dir(second, out))["imported"] == 5
    for path, metadata in given.items():  # exactly, types and all (`lot` mixed: text)
        expected = {**metadata, "lot": "3"} if path == files[3] else metadata
        got = await metadata_of(second, path)
        assert got == expected and [type(v) for v in got.values()] == [
            type(expected[k]) for k in got
        ]
    assert await metadata_of(second, files[1]) == {}
    for where in ("sku:A-1", "price:12.5", "sale:true", "sku:B-2", "size:XL"):
        a, b = await found(first, files[2], where), await found(second, files[2], where)
        assert a == b and len(a) == 1, where
    assert await found(second, files[2], "sku:nothing") == []
