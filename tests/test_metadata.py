"""Metadata per image: set on add, from CSV columns, replaced, returned everywhere, kept."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.metadata import MAX_BYTES
from imgsearch.service import Service

from .helpers import get_json, jpeg_bytes, photo, serving, wait_for, web_site

Client = TestClient[web.Request, web.Application]


async def _post(client: Client, path: str, status: int = 200, **kwargs: Any) -> Any:
    resp = await client.post(path, **kwargs)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_add_with_metadata_and_replace_it(client: Client, photos: dict[str, Path]) -> None:
    cat = str(photos["chelsea"])
    meta = {"sku": "A-1042", "price": 12.5, "count": 3, "in_stock": True}
    report = await _post(client, "/add", json={"image": cat, "metadata": meta})
    assert report["added"] == 1
    record = await get_json(client, "/image", image=cat)
    assert record["metadata"] == meta
    assert record["path"] == cat and record["size"] == photos["chelsea"].stat().st_size
    assert record["width"] > 0 and record["height"] > 0 and len(record["sha256"]) == 64
    assert record["source"] is None and record["added"] > 0 and record["missing"] is False
    hits = await get_json(client, "/search", image=cat)
    assert hits["results"][0]["metadata"] == meta

    new = {"sku": "A-1043"}
    body = await _post(client, "/metadata", json={"image": cat, "metadata": new})
    assert body == {"image": cat, "metadata": new}
    assert (await get_json(client, "/image", image=cat))["metadata"] == new
    await _post(client, "/metadata", json={"image": cat, "metadata": {}})
    hits = await get_json(client, "/search", image=cat)
    assert "metadata" not in hits["results"][0]


async def test_bad_metadata_is_refused(client: Client, photos: dict[str, Path]) -> None:
    cat = str(photos["chelsea"])
    await get_json(client, "/add", image=cat)
    for bad, words in (
        ([1, 2], "must be a JSON object"),
        ({"a": None}, "string, number or boolean"),
        ({"a": {"b": 1}}, "string, number or boolean"),
        ({"a:b": 1}, "has a ':'"),
        ({"": 1}, "non-empty strings"),
    ):
        error = await _post(client, "/metadata", 400, json={"image": cat, "metadata": bad})
        assert words in error["error"] and error["status"] == 400
    huge = {"k": "x" * MAX_BYTES}
    error = await _post(client, "/metadata", 413, json={"image": cat, "metadata": huge})
    assert "16384-byte limit" in error["error"]
    await _post(client, "/add", 413, json={"image": cat, "metadata": huge})
    await _post(client, "/metadata", 400, json={"image": cat})
    await _post(client, "/metadata", 400, json={"image": 7, "metadata": {}})
    await _post(client, "/metadata", 400, json=["not", "an", "object"])
    await _post(client, "/metadata", 400, data=b"{", headers={"Content-Type": "application/json"})
    other = str(photos["rocket"])
    await _post(client, "/metadata", 404, json={"image": other, "metadata": {"a": 1}})
    await get_json(client, "/image", status=404, image=other)
    await get_json(client, "/image", status=400, image="relative.jpg")
    folder = str(photos["rocket"].parent)
    error = await _post(client, "/add", 400, json={"image": folder, "metadata": {"a": 1}})
    assert "one image" in error["error"]
    assert (await get_json(client, "/image", image=cat))["metadata"] == {}


async def test_csv_with_paths_adds_and_sets_metadata(
    client: Client, photos: dict[str, Path], tmp_path: Path
) -> None:
    rows = ["path,sku,colour"]
    rows += [f"{photos['chelsea']},C-1,tabby", f"{photos['coffee']},K-2,", "relative.jpg,X,y"]
    rows += [f"{tmp_path / 'gone.jpg'},G-3,red", ",,"]
    headers = {"Content-Type": "text/csv"}
    report = await _post(client, "/add", data="\n".join(rows) + "\n", headers=headers)
    assert (report["added"], report["failed"]) == (2, 2)
    failed = {e["image"] for e in report["errors"]}
    assert failed == {"relative.jpg", str(tmp_path / "gone.jpg")}
    cat = await get_json(client, "/image", image=str(photos["chelsea"]))
    assert cat["metadata"] == {"sku": "C-1", "colour": "tabby"}
    cup = await get_json(client, "/image", image=str(photos["coffee"]))
    assert cup["metadata"] == {"sku": "K-2"}  # a blank cell is no key
    jobs = await get_json(client, "/jobs")
    assert jobs["jobs"][0]["kind"] == "files" and jobs["jobs"][0]["image"] == "4 listed files"
    error = await _post(client, "/add", 400, data="name\nx\n", headers=headers)
    assert "a 'path' or a 'url' column" in error["error"]


def test_metadata_follows_a_watched_move_and_goes_with_a_removal(
    config: Config, tiny_embedder: Embedder, photos: dict[str, Path]
) -> None:
    folder = photos["chelsea"].parent
    service = Service(dataclasses.replace(config, watch=(folder,)), embedder=tiny_embedder)
    try:
        store = service.catalog.store
        wait_for("initial sync", lambda: str(photos["chelsea"]) in _stored(service))
        cat_id = _stored(service)[str(photos["chelsea"])]
        store.metadata.replace({cat_id: {"lot": 7}})
        moved = folder / "sub" / "cat.jpg"
        moved.parent.mkdir()
        os.rename(photos["chelsea"], moved)
        wait_for("move followed", lambda: _stored(service).get(str(moved)) == cat_id)
        record = store.metadata.record(str(moved))
        assert record is not None and record["metadata"] == {"lot": 7}
        service.remove(moved)
        rows = store.db.reader().execute("SELECT count(*) FROM image_metadata").fetchone()
        assert rows[0] == 0  # gone with the image
    finally:
        service.close()


def _stored(service: Service) -> dict[str, int]:
    return {r.path: r.id for r in service.catalog.store.files_under("/") if not r.missing}


async def test_duplicates_members_carry_metadata(client: Client, photos: dict[str, Path]) -> None:
    folder = photos["chelsea"].parent
    shutil.copy(photos["chelsea"], folder / "copy.jpg")
    await get_json(client, "/add", image=str(folder))
    meta = {"sku": "C-1"}
    await _post(client, "/metadata", json={"image": str(folder / "copy.jpg"), "metadata": meta})
    report = await get_json(client, "/duplicates")
    members = {m["image"]: m for c in report["clusters"] for m in c["images"]}
    assert members[str(folder / "copy.jpg")]["metadata"] == meta
    assert "metadata" not in members[str(photos["chelsea"])]
    assert json.dumps(report)  # plain JSON


def _jpeg(name: str) -> bytes:
    return jpeg_bytes(photo(name, 160))


async def _metadata_of(client: Client, config: Config, data: bytes) -> Any:
    """The metadata of the image downloaded as `data` (stored as downloads/<sha256>.jpg)."""
    stored = config.data_dir / "downloads" / f"{hashlib.sha256(data).hexdigest()}.jpg"
    return (await get_json(client, "/image", image=str(stored)))["metadata"]


async def test_a_url_whose_picture_changed_gives_only_the_new_one_its_metadata(
    client: Client, config: Config
) -> None:
    monday, tuesday = _jpeg("chelsea"), _jpeg("rocket")
    latest = {"body": monday}  # a webcam's latest.jpg

    async def webcam(request: web.Request) -> web.Response:
        return web.Response(body=latest["body"], content_type="image/jpeg")

    async with web_site({"/latest.jpg": webcam}) as base:
        url = f"{base}/latest.jpg"
        await _post(client, "/add", json={"url": url, "metadata": {"day": "monday"}})
        latest["body"] = tuesday
        report = await _post(client, "/add", json={"url": url, "metadata": {"day": "tuesday"}})
    assert report["added"] == 1
    assert await _metadata_of(client, config, monday) == {"day": "monday"}
    assert await _metadata_of(client, config, tuesday) == {"day": "tuesday"}


async def test_url_metadata_reaches_a_picture_stored_from_another_url(
    client: Client, config: Config
) -> None:
    cat, cup = _jpeg("chelsea"), _jpeg("coffee")
    routes = {"/cat.jpg": serving(cat), "/cup.jpg": serving(cup)}

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/cat.jpg")

    async with web_site({**routes, "/moved": moved}) as base:
        await _post(client, "/add", json={"url": f"{base}/cat.jpg", "metadata": {"sku": "OLD"}})
        # A CDN link with a new token: the picture is a skip, as a path added again is, and
        # takes the new metadata as that path would.
        token = {"url": f"{base}/cat.jpg?token=abc", "metadata": {"sku": "NEW"}}
        assert (await _post(client, "/add", json=token))["skipped"] == 1
        assert await _metadata_of(client, config, cat) == {"sku": "NEW"}
        headers = {"Content-Type": "text/csv"}
        report = await _post(client, "/add", data=f"url,sku\n{base}/moved,R\n", headers=headers)
        assert report["skipped"] == 1
        assert await _metadata_of(client, config, cat) == {"sku": "R"}
        # Two URLs of one CSV with one picture: the second is skipped within the add and
        # still finds it.
        rows = f"url,sku\n{base}/cup.jpg?a=1,\n{base}/cup.jpg?b=2,CUP\n"
        report = await _post(client, "/add", data=rows, headers=headers)
        assert (report["added"], report["skipped"]) == (1, 1)
        assert await _metadata_of(client, config, cup) == {"sku": "CUP"}


async def test_url_metadata_is_kept_for_urls_with_spaces_around(
    client: Client, config: Config
) -> None:
    cat, cup = _jpeg("chelsea"), _jpeg("coffee")
    async with web_site({"/cat.jpg": serving(cat), "/cup.jpg": serving(cup)}) as base:
        one = {"url": f"{base}/cat.jpg ", "metadata": {"sku": "CAT"}}
        assert (await _post(client, "/add", json=one))["added"] == 1
        many = {"urls": [f" {base}/cup.jpg"], "metadata": {"sku": "CUP"}}
        assert (await _post(client, "/add", json=many))["added"] == 1
    assert await _metadata_of(client, config, cat) == {"sku": "CAT"}
    assert await _metadata_of(client, config, cup) == {"sku": "CUP"}


async def test_a_form_body_that_is_not_utf8_is_a_400(
    client: Client, photos: dict[str, Path]
) -> None:
    body = f"image={photos['chelsea']}&where=sku:".encode() + b"\xff"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    error = await _post(client, "/search", 400, data=body, headers=headers)
    assert error == {"error": "form body is not UTF-8 text", "status": 400}
