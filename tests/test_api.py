"""The HTTP API through aiohttp's test client: a real app, real SQLite and FAISS, real files."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app
from imgsearch.web.keys import SERVICE

from .helpers import ClientFactory, get_json, jpeg_bytes, photo

Client = TestClient[web.Request, web.Application]


async def add(client: Client, target: Path, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = await get_json(client, "/add", image=str(target), **params)
    return result


async def test_health_and_empty_stats(client: Client, config: Config) -> None:
    assert await get_json(client, "/health") == {"ok": True}
    stats = await get_json(client, "/stats")
    assert stats["images"] == 0
    assert stats["dim"] == 32
    assert stats["model"] == "open_clip/imgsearch-test-tiny/random"
    assert stats["index"]["vectors"] == 0
    assert stats["data_dir"] == str(config.data_dir)
    free = shutil.disk_usage(config.data_dir).free / 1e6
    assert stats["disk_free_mb"] == pytest.approx(free, abs=50)


async def test_add_nested_folders_and_search_finds_itself(client: Client, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "a" / "b").mkdir(parents=True)
    photo("chelsea").save(root / "top.jpg")
    photo("coffee").save(root / "a" / "mid.png")
    photo("rocket").save(root / "a" / "b" / "deep.webp")
    photo("astronaut").save(root / "a" / "b" / "skip.txt", format="JPEG")  # not an image name

    report = await add(client, root)
    assert report == {"added": 3, "updated": 0, "skipped": 0, "failed": 0, "errors": []}
    for name in ("top.jpg", "a/mid.png", "a/b/deep.webp"):
        body = await get_json(client, "/search", image=str(root / name), limit=3)
        first = body["results"][0]
        assert first["image"] == str(root / name)
        assert first["distance"] == pytest.approx(0.0, abs=1e-4)
        distances = [r["distance"] for r in body["results"]]
        assert distances == sorted(distances)
    stats = await get_json(client, "/stats")
    assert stats["images"] == 3 and stats["index"]["vectors"] == 3


async def test_same_name_in_two_folders_both_kept(client: Client, tmp_path: Path) -> None:
    for folder, name in (("x", "chelsea"), ("y", "rocket")):
        (tmp_path / folder).mkdir()
        photo(name).save(tmp_path / folder / "cat.jpg")
    assert (await add(client, tmp_path))["added"] == 2
    body = await get_json(client, "/search", image=str(tmp_path / "y" / "cat.jpg"), limit=5)
    assert {r["image"] for r in body["results"]} == {
        str(tmp_path / "x" / "cat.jpg"),
        str(tmp_path / "y" / "cat.jpg"),
    }
    assert body["results"][0]["image"] == str(tmp_path / "y" / "cat.jpg")


async def test_readd_skips_and_update_reembeds(client: Client, photos: dict[str, Path]) -> None:
    folder = photos["chelsea"].parent
    assert (await add(client, folder))["added"] == 5
    assert (await add(client, folder)) == {
        "added": 0,
        "updated": 0,
        "skipped": 5,
        "failed": 0,
        "errors": [],
    }
    assert (await add(client, folder, update=1))["updated"] == 5
    # A changed file (new content, new mtime) is re-embedded without update=1.
    photo("horse").save(photos["chelsea"])
    report = await add(client, folder)
    assert (report["updated"], report["skipped"]) == (1, 4)
    body = await get_json(client, "/search", image=str(photos["chelsea"]), limit=1)
    assert body["results"][0] == {
        "image": str(photos["chelsea"]),
        "distance": pytest.approx(0, abs=1e-4),
    }
    assert (await get_json(client, "/stats"))["images"] == 5


async def test_single_file_add_and_post_add(client: Client, photos: dict[str, Path]) -> None:
    assert (await add(client, photos["coffee"]))["added"] == 1
    resp = await client.post("/add", json={"image": str(photos["rocket"])})
    assert resp.status == 200
    assert (await resp.json())["added"] == 1
    assert (await get_json(client, "/stats"))["images"] == 2


async def test_corrupt_files_among_good_ones(client: Client, photos: dict[str, Path]) -> None:
    folder = photos["chelsea"].parent
    (folder / "text.jpg").write_text("this is not a picture")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(photos["coffee"].read_bytes()[:2000])
    report = await add(client, folder)
    assert report["added"] == 5
    assert report["failed"] == 3
    failed = {Path(e["image"]).name: e["error"] for e in report["errors"]}
    assert set(failed) == {"text.jpg", "empty.png", "truncated.jpg"}
    assert all(isinstance(reason, str) and reason for reason in failed.values())


async def test_remove_file_then_folder(client: Client, tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "gone" / "sub").mkdir(parents=True)
    (tmp_path / "gone2").mkdir()  # shares a prefix with "gone": must survive
    photo("chelsea").save(tmp_path / "keep" / "a.jpg")
    photo("coffee").save(tmp_path / "gone" / "b.jpg")
    photo("rocket").save(tmp_path / "gone" / "sub" / "c.jpg")
    photo("camera").save(tmp_path / "gone2" / "d.jpg")
    assert (await add(client, tmp_path))["added"] == 4

    body = await get_json(client, "/remove", image=str(tmp_path / "keep" / "a.jpg"))
    assert body == {"removed": 1}
    body = await get_json(client, "/remove", image=str(tmp_path / "gone"))
    assert body == {"removed": 2}
    assert await get_json(client, "/remove", image=str(tmp_path / "gone")) == {"removed": 0}

    body = await get_json(client, "/search", image=str(tmp_path / "gone" / "b.jpg"), limit=10)
    assert [r["image"] for r in body["results"]] == [str(tmp_path / "gone2" / "d.jpg")]
    stats = await get_json(client, "/stats")
    assert stats["images"] == stats["index"]["vectors"] == 1


JPEG = {"Content-Type": "image/jpeg"}


async def test_post_search_upload_data_uri_and_raw(client: Client, photos: dict[str, Path]) -> None:
    await add(client, photos["chelsea"].parent)
    raw = photos["rocket"].read_bytes()
    expected = str(photos["rocket"])

    form = FormData()
    form.add_field("image", raw, filename="q.jpg", content_type="image/jpeg")
    form.add_field("limit", "2")
    resp = await client.post("/search", data=form)
    body = await resp.json()
    assert resp.status == 200, body
    assert len(body["results"]) == 2 and body["results"][0]["image"] == expected

    uri = "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    resp = await client.post("/search", json={"image": uri, "limit": 3})
    body = await resp.json()
    assert len(body["results"]) == 3 and body["results"][0]["image"] == expected

    resp = await client.post("/search", json={"image": expected})
    assert (await resp.json())["results"][0]["image"] == expected
    resp = await client.post("/search", data={"image": expected, "limit": "1"})
    assert [r["image"] for r in (await resp.json())["results"]] == [expected]

    resp = await client.post("/search?limit=1", data=raw, headers={"Content-Type": "image/jpeg"})
    assert (await resp.json())["results"] == [
        {"image": expected, "distance": pytest.approx(0, abs=1e-4)}
    ]
    # The upload is the query: another named in the query string is a 400, never ignored.
    other = str(photos["coffee"])
    for query in ({"image": other}, {"text": "a cat"}, {"url": "http://x/y.jpg"}, {"vector": "1"}):
        resp = await client.post("/search", params=query, data=raw, headers=JPEG)
        assert resp.status == 400 and "not several" in (await resp.json())["error"], query
        form = FormData()
        form.add_field("image", raw, filename="q.jpg", content_type="image/jpeg")
        resp = await client.post("/search", params=query, data=form)
        assert resp.status == 400 and "not several" in (await resp.json())["error"], query


async def test_search_on_empty_index_is_empty(client: Client, photos: dict[str, Path]) -> None:
    assert await get_json(client, "/search", image=str(photos["coffee"])) == {"results": []}


async def test_limit_is_respected_and_capped(client: Client, photos: dict[str, Path]) -> None:
    await add(client, photos["chelsea"].parent)
    body = await get_json(client, "/search", image=str(photos["coffee"]), limit=1000)
    assert len(body["results"]) == 5
    body = await get_json(client, "/search", image=str(photos["coffee"]))
    assert len(body["results"]) == 5  # default limit 10, only 5 stored


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "fragment"),
    [
        ("GET", "/search", {}, 400, "missing parameter: image"),
        ("GET", "/search", {"image": "relative/x.jpg"}, 400, "absolute path"),
        ("GET", "/search", {"image": "/no/such/file.jpg"}, 404, "no such file"),
        ("GET", "/search", {"image": "{photo}", "limit": "ten"}, 400, "limit must be an integer"),
        ("GET", "/search", {"image": "{photo}", "limit": "0"}, 400, "between 1 and 1000"),
        ("GET", "/search", {"image": "{photo}", "limit": "1001"}, 400, "between 1 and 1000"),
        ("GET", "/search", {"image": "{text}"}, 422, "not a recognised image"),
        ("GET", "/add", {}, 400, "missing parameter: image"),
        ("GET", "/add", {"image": "/no/such/dir"}, 404, "no such file or directory"),
        ("GET", "/add", {"image": "{photo}", "update": "maybe"}, 400, "update must be 0 or 1"),
        ("GET", "/add", {"image": "{text}"}, 422, "not a recognised image"),
        ("GET", "/remove", {}, 400, "missing parameter: image"),
        ("GET", "/nowhere", {}, 404, "no such endpoint: /nowhere"),
        ("DELETE", "/search", {}, 405, "DELETE is not allowed on /search"),
        ("POST", "/stats", {}, 405, "not allowed"),
    ],
)
async def test_error_statuses_and_shape(
    client: Client,
    photos: dict[str, Path],
    method: str,
    path: str,
    params: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    text = photos["chelsea"].parent / "notes.jpg"
    text.write_text("hello")
    params = {k: v.format(photo=photos["chelsea"], text=text) for k, v in params.items()}
    resp = await client.request(method, path, params=params)
    assert resp.status == status
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "status"}
    assert body["status"] == status
    assert fragment in body["error"]


def _upload(field: str, data: bytes) -> FormData:
    form = FormData()
    form.add_field(field, io.BytesIO(data), filename="x.jpg", content_type="image/jpeg")
    return form


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ({"json": [1, 2]}, 400, "must be a JSON object"),
        ({"json": {"limit": 3}}, 400, "needs 'image'"),
        ({"json": {"image": "data:image/png;base64,@@@@"}}, 400, "not valid base64"),
        ({"json": {"image": "data:text/plain,hello"}}, 400, "data:image"),
        (
            {"json": {"image": "data:image/png;base64," + base64.b64encode(b"nope").decode()}},
            422,
            "not a recognised",
        ),
        ({"data": b"x", "headers": {"Content-Type": "text/plain"}}, 400, "takes multipart"),
        ({"data": FormData({"limit": "3"})}, 400, "needs 'image'"),
        ({"data": _upload("other", b"x")}, 400, "field named 'image'"),
    ],
)
async def test_post_search_bad_bodies(
    client: Client, kwargs: dict[str, Any], status: int, fragment: str
) -> None:
    resp = await client.post("/search", **kwargs)
    body = await resp.json()
    assert (resp.status, body["status"]) == (status, status), body
    assert fragment in body["error"]


async def test_upload_over_limit_is_413(client: Client, config: Config) -> None:
    big = jpeg_bytes(photo("astronaut", 512)) + b"\0" * (config.max_upload_bytes + 1)
    form = FormData()
    form.add_field("image", io.BytesIO(big), filename="big.jpg", content_type="image/jpeg")
    resp = await client.post("/search", data=form)
    assert resp.status == 413
    assert (await resp.json())["status"] == 413

    resp = await client.post(
        "/search", data=io.BytesIO(big), headers={"Content-Type": "image/jpeg"}
    )
    assert resp.status == 413
    uri = "data:image/jpeg;base64," + base64.b64encode(big).decode()
    body = io.BytesIO(json.dumps({"image": uri}).encode())
    resp = await client.post("/search", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["status"] == 413


async def test_unexpected_error_is_json_500_without_traceback(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, photos: dict[str, Path]
) -> None:
    class Broken:
        model_id, dim, input_size = tiny_embedder.model_id, tiny_embedder.dim, 64

        def prepare(self, image: Any) -> Any:
            return tiny_embedder.prepare(image)

        def embed_prepared(self, batch: Any) -> Any:
            raise RuntimeError("secret internals")

        def embed_images(self, images: Any) -> Any:
            raise RuntimeError("secret internals")

    client = await aiohttp_client(create_app(config, embedder=Broken()))
    resp = await client.get("/search", params={"image": str(photos["coffee"])})
    assert resp.status == 500
    body = await resp.json()
    assert body["status"] == 500 and "secret" not in body["error"]


@pytest.mark.slow  # a long real workload
async def test_stats_answers_while_a_long_add_runs(client: Client, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    base = photo("coffee", 480)
    for i in range(60):
        base.rotate(i * 6).save(folder / f"{i:03}.png")
    add_task = asyncio.create_task(client.get("/add", params={"image": str(folder)}))
    answered_during_add = 0
    while not add_task.done():
        resp = await client.get("/stats")
        assert resp.status == 200
        await resp.json()
        if not add_task.done():
            answered_during_add += 1
        await asyncio.sleep(0.01)
    assert (await (await add_task).json())["added"] == 60
    assert answered_during_add > 0


async def test_stats_needs_no_worker_thread_and_no_sqlite(
    client: Client, photos: dict[str, Path]
) -> None:
    """/stats answers from memory on the event loop: while the loop's only worker thread is
    taken and another thread holds the store's write transaction open (as a bulk import does)."""
    await add(client, photos["coffee"])
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    release, writing = threading.Event(), threading.Event()
    taken = loop.run_in_executor(None, release.wait)

    def hold_the_writer() -> None:
        with client.app[SERVICE].catalog.store.db.write():
            writing.set()
            release.wait()

    writer = threading.Thread(target=hold_the_writer)
    writer.start()
    try:
        assert writing.wait(5)
        resp = await asyncio.wait_for(client.get("/stats"), timeout=5)
        assert resp.status == 200 and (await resp.json())["images"] == 1
    finally:
        release.set()
        writer.join()
        await taken  # (the loop shuts `workers` down when it closes)


async def test_symlink_loop_and_symlinked_file(client: Client, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    photo("chelsea").save(root / "sub" / "cat.jpg")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "alias.jpg").symlink_to(root / "sub" / "cat.jpg")
    report = await add(client, root)
    assert report["added"] == 1 and report["failed"] == 0
    body = await get_json(client, "/search", image=str(root / "alias.jpg"), limit=5)
    assert [r["image"] for r in body["results"]] == [str(root / "sub" / "cat.jpg")]


async def test_restart_keeps_everything(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, photos: dict[str, Path]
) -> None:
    first = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    await add(first, photos["chelsea"].parent)
    await first.close()

    second = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    stats = await get_json(second, "/stats")
    index = stats["index"]
    assert stats["images"] == 5 and index["vectors"] == 5 and index["kind"] == "exact"
    assert index["origin"] in {"rebuilt", "replayed"} and index["recall_at_10"] == 1.0
    assert (config.data_dir / "index").is_dir()
    body = await get_json(second, "/search", image=str(photos["rocket"]), limit=1)
    assert body["results"][0]["image"] == str(photos["rocket"])
    await second.close()

    shutil.copy(photos["rocket"], photos["rocket"].with_name("copy.jpg"))
    shutil.rmtree(config.data_dir / "index")
    third = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    stats = await get_json(third, "/stats")
    assert stats["index"]["origin"] == "rebuilt" and stats["index"]["vectors"] == 5
    body = await get_json(third, "/search", image=str(photos["rocket"]), limit=1)
    assert body["results"][0]["image"] == str(photos["rocket"])


async def test_single_file_add_keeps_the_failure_status(client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg_bytes(photo("coffee")) + b"\0" * (3 * 1024 * 1024))
    body = await get_json(client, "/add", 413, image=str(big))
    assert "over the" in body["error"] and body["status"] == 413
    (tmp_path / "dir").mkdir()
    big.rename(tmp_path / "dir" / "big.jpg")
    report = await add(client, tmp_path / "dir")
    assert report["failed"] == 1 and "over the" in report["errors"][0]["error"]


@pytest.mark.slow  # a long real workload
async def test_full_queue_answers_503_with_retry_after(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(config, max_pending_adds=1)
    client = await aiohttp_client(create_app(cfg, embedder=tiny_embedder))
    folder = tmp_path / "many"
    folder.mkdir()
    base = photo("rocket", 480)
    for i in range(40):
        base.rotate(i * 9).save(folder / f"{i:03}.png")
    photo("chelsea").save(tmp_path / "one.jpg")
    first = asyncio.create_task(client.get("/add", params={"image": str(folder)}))
    while not (await get_json(client, "/stats"))["images"]:  # the add is under way
        await asyncio.sleep(0.01)
    resp = await client.get("/add", params={"image": str(tmp_path / "one.jpg")})
    assert resp.status == 503 and resp.headers["Retry-After"] == "10"
    assert (await resp.json())["status"] == 503
    body = await get_json(client, "/search", image=str(folder / "000.png"), limit=1)
    assert len(body["results"]) == 1  # searches are still answered
    assert (await (await first).json())["added"] == 40
    assert (await get_json(client, "/add", image=str(tmp_path / "one.jpg")))["added"] == 1


async def test_search_by_vector(
    client: Client, tiny_embedder: Embedder, photos: dict[str, Path]
) -> None:
    await add(client, photos["chelsea"].parent)
    (vector,) = tiny_embedder.embed_images([photo("rocket")])
    scaled = (vector * 7.5).tolist()  # unit length is not required
    resp = await client.post("/search", json={"vector": scaled, "limit": 2})
    body = await resp.json()
    assert resp.status == 200, body
    assert len(body["results"]) == 2 and body["results"][0]["image"] == str(photos["rocket"])
    by_image = await get_json(client, "/search", image=str(photos["rocket"]), limit=2)
    assert [r["image"] for r in body["results"]] == [r["image"] for r in by_image["results"]]

    bad = [
        ({"vector": scaled[:-1]}, "makes 32"),
        ({"vector": [*scaled[:-1], float("nan")]}, "finite"),
        ({"vector": [0.0] * 32}, "zeros"),
        ({"vector": "1,2"}, "list of numbers"),
        ({"vector": [True] * 32}, "list of numbers"),
        ({"vector": scaled, "compare": "orb"}, "compare needs an image"),
        ({"vector": scaled, "text": "a cat"}, "give either text or vector, not both"),
    ]
    for payload, message in bad:
        data = json.dumps(payload, allow_nan=True)  # NaN as JSON's common extension
        resp = await client.post("/search", data=data, headers={"Content-Type": "application/json"})
        body = await resp.json()
        assert resp.status == 400 and body["status"] == 400, (payload, body)
        assert message in body["error"], (payload, body)
