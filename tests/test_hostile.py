"""A generated corpus of hostile files next to valid photos, through GET /add and GET /search.

Every valid file, however odd its format, must be indexed and find itself; every invalid one must
be reported with a reason, never crash the run, and as a query answer 4xx in the error shape.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import BadRequest, NotFound
from imgsearch.images import read_file
from imgsearch.web import bodies, create_app, parsing
from imgsearch.web.gate import Gate
from imgsearch.web.keys import SERVICE

from .helpers import ClientFactory, get_json, jpeg_bytes, photo

Client = TestClient[web.Request, web.Application]
Maker = Callable[[Path], None]

GIF_FRAMES = 2000


def _sample(name: str, size: int = 96) -> Image.Image:
    return photo(name, size)


def _png_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims `width` x `height` but holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _bytes(data: bytes) -> Maker:
    return lambda path: path.write_bytes(data)


def _saved(img: Image.Image, **kwargs: Any) -> Maker:
    return lambda path: img.save(path, **kwargs)


# -- valid files of awkward kinds --------------------------------------------------------------


def _cmyk_jpeg(path: Path) -> None:
    _sample("coffee").convert("CMYK").save(path, format="JPEG")


def _sixteen_bit_png(path: Path) -> None:
    arr = np.asarray(_sample("camera").convert("L"), dtype=np.uint16) * 257
    Image.fromarray(arr.astype(np.uint16)).save(path, format="PNG")
    with Image.open(path) as check:
        assert check.mode.startswith("I")


def _palette_transparent_png(path: Path) -> None:
    img = _sample("colorwheel").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img.info["transparency"] = 0
    img.save(path, format="PNG", transparency=0)


def _la_png(path: Path) -> None:
    grey = _sample("moon").convert("L")
    alpha = Image.linear_gradient("L").resize(grey.size)
    Image.merge("LA", (grey, alpha)).save(path, format="PNG")


def _rgba_png(path: Path) -> None:
    img = _sample("astronaut").convert("RGBA")
    img.putalpha(Image.radial_gradient("L").resize(img.size))
    img.save(path, format="PNG")


def _one_bit_png(path: Path) -> None:
    _sample("horse").convert("1").save(path, format="PNG")


def _exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    _sample("rocket").save(path, format="JPEG", exif=exif)


def _multipage_tiff(path: Path) -> None:
    pages = [_sample("immunohistochemistry"), _sample("chelsea"), _sample("coins").convert("RGB")]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])


def _animated_gif(path: Path) -> None:
    """GIF_FRAMES small frames, each a little different so Pillow keeps them all."""
    first = _sample("hubble_deep_field", 64).convert("P", palette=Image.Palette.ADAPTIVE)
    frames = []
    for i in range(1, GIF_FRAMES):
        frame = Image.new("P", (8, 8), i % 200)
        frame.putpalette(first.getpalette() or [])
        frames.append(frame.resize(first.size))
    first.save(path, format="GIF", save_all=True, append_images=frames, duration=20, loop=0)


def _progressive_jpeg(path: Path) -> None:
    _sample("brick").save(path, format="JPEG", progressive=True, quality=80)


def _grey_webp(path: Path) -> None:
    _sample("gravel").save(path, format="WEBP")


def _bmp(path: Path) -> None:
    _sample("clock").save(path, format="BMP")


# -- invalid files -------------------------------------------------------------------------------


def _decompression_bomb(path: Path) -> None:
    """A few kB on disk that would decode to 225 megapixels."""
    Image.new("1", (15_000, 15_000)).save(path, format="PNG", optimize=False)


def _bad_crc_png(path: Path) -> None:
    data = bytearray(_png_bytes(_sample("grass")))
    idat = data.find(b"IDAT")
    data[idat + 40 : idat + 80] = b"\xff" * 40
    path.write_bytes(bytes(data))


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop_b.jpg")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "no-such-target.jpg")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@dataclass(frozen=True)
class Case:
    name: str
    make: Maker
    valid: bool


def _cases(max_file_bytes: int) -> list[Case]:
    jpeg = jpeg_bytes(_sample("chelsea"))
    png = _png_bytes(_sample("coffee"))
    gif = io.BytesIO()
    _sample("page").save(gif, format="GIF")
    tiff = io.BytesIO()
    _sample("text").save(tiff, format="TIFF")
    webp = io.BytesIO()
    _sample("logo").save(webp, format="WEBP")
    valid = [
        Case("plain.jpg", _saved(_sample("cat"), format="JPEG"), True),
        Case("plain.png", _saved(_sample("retina"), format="PNG"), True),
        Case("cmyk.jpg", _cmyk_jpeg, True),
        Case("sixteen_bit.png", _sixteen_bit_png, True),
        Case("palette_transparent.png", _palette_transparent_png, True),
        Case("grey_alpha.png", _la_png, True),
        Case("rgba.png", _rgba_png, True),
        Case("one_bit.png", _one_bit_png, True),
        Case("exif_rotated.jpg", _exif_rotated_jpeg, True),
        Case("png_named.jpg", _saved(_sample("checkerboard").rotate(30), format="PNG"), True),
        Case("multipage.tif", _multipage_tiff, True),
        Case("animated.gif", _animated_gif, True),
        Case("progressive.jpg", _progressive_jpeg, True),
        Case("grey.webp", _grey_webp, True),
        Case("clock.bmp", _bmp, True),
        Case("UPPER.JPEG", _saved(_sample("microaneurysms"), format="JPEG"), True),
    ]
    invalid = [
        Case("truncated.jpg", _bytes(jpeg[: len(jpeg) // 2]), False),
        Case("truncated.png", _bytes(png[: len(png) // 2]), False),
        Case("header_only.jpg", _bytes(jpeg[:200]), False),
        Case("signature_only.png", _bytes(png[:8]), False),
        Case("truncated.gif", _bytes(gif.getvalue()[:60]), False),
        Case("truncated.tif", _bytes(tiff.getvalue()[:100]), False),
        Case("truncated.webp", _bytes(webp.getvalue()[:40]), False),
        Case("zero.jpg", _bytes(b""), False),
        Case("zero.png", _bytes(b""), False),
        Case("text.jpg", _bytes(b"just some text, not a picture\n" * 20), False),
        Case("page.png", _bytes(b"<!doctype html><html><body><img src=x></body></html>"), False),
        Case("random.jpg", _bytes(np.random.default_rng(1).bytes(5000)), False),
        Case("soi_then_junk.jpg", _bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 3000), False),
        Case("bad_crc.png", _bad_crc_png, False),
        Case("huge_dims.png", _bytes(_png_header_only(60_000, 60_000)), False),
        Case("over_pixel_limit.png", _bytes(_png_header_only(12_500, 12_500)), False),
        Case("zero_dims.png", _bytes(_png_header_only(0, 0)), False),
        Case("bomb.png", _decompression_bomb, False),
        Case("too_big.jpg", _bytes(jpeg + b"\0" * max_file_bytes), False),
        Case("loop_a.jpg", _symlink_loop, False),  # makes loop_b.jpg too
        Case("dangling.jpg", _dangling, False),
        Case("fifo.jpg", _fifo, False),
    ]
    return valid + invalid


@dataclass(frozen=True)
class Corpus:
    folder: Path
    valid: list[Path]
    invalid: list[Path]
    nested_dir: Path  # a directory named like an image, holding one valid photo


MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # the `config` fixture's max_upload_mb=2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("hostile").resolve()
    valid: list[Path] = []
    invalid: list[Path] = []
    for case in _cases(MAX_UPLOAD_BYTES):
        path = folder / case.name
        case.make(path)
        (valid if case.valid else invalid).append(path)
    invalid.append(folder / "loop_b.jpg")
    nested_dir = folder / "folder.jpg"
    nested_dir.mkdir()
    inside = nested_dir / "inside.jpg"
    _sample("coins").convert("RGB").save(inside, format="JPEG")
    valid.append(inside)
    return Corpus(folder, valid, invalid, nested_dir)


async def _get(client: Client, path: str, **params: Any) -> tuple[int, Any]:
    resp = await client.get(path, params=params)
    assert resp.content_type == "application/json", (path, params, resp.status)
    return resp.status, await resp.json()


def _is_error_shape(status: int, body: Any) -> bool:
    return (
        400 <= status < 500
        and isinstance(body, dict)
        and set(body) == {"error", "status"}
        and body["status"] == status
        and isinstance(body["error"], str)
        and bool(body["error"].strip())
    )


async def test_add_folder_indexes_valid_and_reports_each_bad_file(
    client: Client, corpus: Corpus
) -> None:
    started = time.monotonic()
    status, report = await _get(client, "/add", image=str(corpus.folder))
    assert status == 200, report
    assert time.monotonic() - started < 30, "hostile files must not stall indexing"

    errors = {e["image"]: e["error"] for e in report["errors"]}
    assert report["added"] == len(corpus.valid), errors
    assert sorted(errors) == sorted(str(p) for p in corpus.invalid)
    assert report["failed"] == len(corpus.invalid)
    for image, reason in errors.items():
        assert isinstance(reason, str) and reason.strip(), image
        assert not reason.startswith("unexpected error"), (image, reason)

    stats = await get_json(client, "/stats")
    assert stats["images"] == stats["index"]["vectors"] == len(corpus.valid)
    assert await get_json(client, "/health") == {"ok": True}


async def test_each_file_as_a_query(client: Client, corpus: Corpus) -> None:
    await get_json(client, "/add", image=str(corpus.folder))
    problems: list[str] = []
    for path in corpus.valid:
        status, body = await _get(client, "/search", image=str(path), limit=3)
        if status != 200:
            problems.append(f"{path.name}: {status} {body}")
            continue
        first = body["results"][0]
        if first["image"] != str(path) or first["distance"] > 1e-3:
            problems.append(f"{path.name}: first hit {first}")
    looped = {corpus.folder / "loop_a.jpg", corpus.folder / "loop_b.jpg"}
    bad_queries = [(route, p) for p in corpus.invalid for route in ("/search", "/add")]
    bad_queries.append(("/search", corpus.nested_dir))  # a folder is no query (but may be added)
    for route, path in bad_queries:
        if path in looped:
            continue  # see test_symlink_loop_as_a_query_is_a_4xx
        status, body = await _get(client, route, image=str(path))
        if not _is_error_shape(status, body):
            problems.append(f"{route} {path.name}: {status} {body}")
    assert problems == []
    assert await get_json(client, "/health") == {"ok": True}


async def test_animated_gif_query_is_quick(client: Client, corpus: Corpus) -> None:
    gif = corpus.folder / "animated.gif"
    with Image.open(gif) as img:
        assert img.n_frames == GIF_FRAMES
    await get_json(client, "/add", image=str(gif))
    started = time.monotonic()
    body = await get_json(client, "/search", image=str(gif), limit=1)
    assert time.monotonic() - started < 2.0
    assert body["results"][0]["image"] == str(gif)


@pytest.mark.parametrize("route", ["/search", "/add", "/remove"])
async def test_symlink_loop_as_a_query_is_a_4xx(client: Client, corpus: Corpus, route: str) -> None:
    status, body = await _get(client, route, image=str(corpus.folder / "loop_a.jpg"))
    assert _is_error_shape(status, body), (status, body)


# -- hostile requests: every one a 4xx in the error shape, never a 500 ----------------------------

JSON = {"Content-Type": "application/json"}
LONG_NAME = "/tmp/" + "a" * 256  # one component over NAME_MAX (255 bytes)


async def _answer(resp: Any) -> tuple[int, Any]:
    assert resp.content_type == "application/json", (resp.status, await resp.text())
    return resp.status, await resp.json()


async def _refused(
    client: Client, method: str, path: str, status: int, says: str, **kw: Any
) -> None:
    got = await _answer(await client.request(method, path, **kw))
    assert got[0] == status and got[1] == {"error": got[1]["error"], "status": status}, (path, got)
    assert says in got[1]["error"], (path, got)


async def test_json_the_parsers_choke_on_is_a_400(client: Client, photos: dict[str, Path]) -> None:
    """Before: 500 (ValueError past 4300 digits, RecursionError from deep nesting or from repr of
    a body orjson read 1000 deep, LookupError for an unknown charset), and a lone surrogate,
    which json reads where orjson refuses, reached paths, SQLite and job records (500s)."""
    deep = "[" * 100_000 + "]" * 100_000
    for path, text, says in [
        ("/search", '{"text": "a", "limit": ' + "1" * 5000 + "}", "more than 4300 digits"),
        ("/add", '{"a": ' + deep + "}", "nested more than"),
        ("/add", '{"image": "/tmp", "wait": ' + "[" * 1000 + "]" * 1000 + "}", "nested more"),
    ]:
        await _refused(client, "POST", path, 400, says, data=text, headers=JSON)
    for ctype, text in [("application/json", '{"text": "a"}'), (parsing.FORM_TYPE, "text=a")]:
        headers = {"Content-Type": f"{ctype}; charset=foobar"}
        await _refused(
            client, "POST", "/search", 400, "unknown charset", data=text, headers=headers
        )
    image = json.dumps(str(photos["rocket"]))
    for path, text in [
        ("/search", '{"image": "/tmp/\\ud800"}'),
        ("/search", '{"text": "a", "where": "k:\\udfff"}'),
        ("/search", '{"text": "a", "limit": 12345678901234567890, "folder": "/\\ud800"}'),
        ("/metadata", '{"image": ' + image + ', "metadata": {"k": "\\ud800"}}'),
        ("/add", '{"url": "http://a/\\ud800", "wait": 0}'),
        ("/import", '{"dir": "/tmp/\\ud800"}'),
        ("/export", '{"dir": "/tmp/\\ud800"}'),
    ]:
        await _refused(client, "POST", path, 400, "lone UTF-16 surrogate", data=text, headers=JSON)
    assert await get_json(client, "/health") == {"ok": True}


async def test_vectors_of_extreme_magnitude(client: Client, photos: dict[str, Path]) -> None:
    """Before: an integer past float64 was a 500 (OverflowError), and [1e308]*32 (norm inf) and
    [1e-200]*32 (norm 0) were refused as "all zeros": each is a direction like [1]*32."""
    await get_json(client, "/add", image=str(photos["rocket"].parent))
    dim = client.app[SERVICE].embedder.dim

    async def search(text: str) -> tuple[int, Any]:
        body = '{"limit": 3, "vector": [' + ", ".join([text] * dim) + "]}"
        return await _answer(await client.post("/search", data=body, headers=JSON))

    huge = "1" + "0" * 400
    status, body = await search(huge)
    assert status == 400 and "finite numbers" in body["error"], body
    status, body = await search("0")
    assert status == 400 and "all zeros" in body["error"], body
    status, want = await search("1")
    assert status == 200 and want["results"], want
    for text in ("1e308", "1e-200", "5e-324"):
        assert await search(text) == (200, want), text


async def test_paths_no_file_system_can_open_are_4xx(
    client: Client, photos: dict[str, Path]
) -> None:
    """Before: 500 for a file used as a folder (ENOTDIR) and for a name over 255 bytes
    (ENAMETOOLONG, raised by Path.exists() too on Python 3.11), and per-file 500s in a CSV add."""
    file_as_folder = f"{photos['rocket']}/x"
    await _refused(client, "GET", "/search", 404, "no such file", params={"image": file_as_folder})
    too_long = "/" + "a/" * 2100
    for method, path, name, value in [
        ("GET", "/search", "image", LONG_NAME),
        ("GET", "/add", "image", LONG_NAME),
        ("GET", "/remove", "image", LONG_NAME),
        ("GET", "/watch", "dir", LONG_NAME),
        ("GET", "/export", "dir", LONG_NAME),
        ("GET", "/search", "image", too_long),
    ]:
        await _refused(client, method, path, 400, "bytes", params={name: value})
    for path in ("/import", "/export"):
        await _refused(client, "POST", path, 400, "at most 255", json={"dir": LONG_NAME})
    csv = f"path\n{file_as_folder}\n{LONG_NAME}\n{photos['rocket']}\n"
    resp = await client.post("/add", data=csv, headers={"Content-Type": "text/csv"})
    report = await resp.json()
    assert resp.status == 200 and report["added"] == 1, report
    assert sorted(e["status"] for e in report["errors"]) == [400, 404], report
    with pytest.raises(NotFound):
        read_file(Path(file_as_folder), MAX_UPLOAD_BYTES)
    with pytest.raises(BadRequest, match="too long"):
        read_file(Path(LONG_NAME), MAX_UPLOAD_BYTES)  # (what the policy lets through no longer)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_not_encoded_as_it_says_is_a_400(client: Client, encoding: str) -> None:
    """Before: 500 (aiohttp's RequestPayloadError, raised where the handler reads the body).
    (A body cut short, or Content-Encoding: br without Brotli, is refused by aiohttp's parser
    before any handler, in its own plain-text shape.)"""
    headers = {"Content-Type": "image/jpeg", "Content-Encoding": encoding}
    body = b"these bytes are neither gzip nor deflate"
    await _refused(client, "POST", "/search", 400, "cannot be read", data=body, headers=headers)


async def test_a_single_valued_parameter_given_twice_is_a_400(
    client: Client, photos: dict[str, Path]
) -> None:
    """Before: the first value won silently: /remove?image=A&image=B removed A."""
    await get_json(client, "/add", image=str(photos["rocket"].parent))
    a, b = str(photos["rocket"]), str(photos["coffee"])
    for method, path, name, values in [
        ("GET", "/remove", "image", [a, b]),
        ("GET", "/search", "image", [a, b]),
        ("GET", "/search?image=" + a, "limit", ["10", "2"]),
        ("GET", "/duplicates", "threshold", ["0.1", "0.2"]),
        ("GET", "/watch", "dir", [str(photos["rocket"].parent), "/tmp"]),
        ("DELETE", "/watch", "dir", [str(photos["rocket"].parent), "/tmp"]),
        ("GET", "/export", "dir", ["/tmp/a", "/tmp/b"]),
        ("GET", "/thumbnail", "image", [a, b]),
        ("GET", "/image", "image", [a, b]),
    ]:
        url = client.make_url(path).extend_query([(name, value) for value in values])
        await _refused(client, method, url.path_qs, 400, f"{name} is given 2 times")
    assert (await get_json(client, "/stats"))["images"] == len(photos)  # nothing removed
    body = await get_json(client, "/search", image=a, limit=["2", "2"])  # the same value: fine
    assert len(body["results"]) == 2


async def test_a_token_of_bytes_that_are_not_utf8_is_a_401(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder
) -> None:
    """Before: 500 (the header arrives with surrogate escapes, which str.encode() refuses)."""
    client = await aiohttp_client(
        create_app(replace(config, token="s3cret"), embedder=tiny_embedder)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"GET /stats HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), answer
    assert json.loads(body)["status"] == 401


async def test_a_job_whose_record_cannot_be_saved_is_not_left_queued(
    client: Client, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the job stayed in the table, queued and never run: max_pending_adds of them
    answered every later add with 503 (and a DELETE of one waited 60 s)."""
    service = client.app[SERVICE]
    jobs_table = service.catalog.store.jobs

    def full(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(jobs_table, "save", full)
    for _ in range(service.config.max_pending_adds + 1):
        await _refused(
            client, "POST", "/jobs", 507, "disk is full", json={"image": str(photos["rocket"])}
        )
    monkeypatch.undo()
    assert (await get_json(client, "/jobs"))["jobs"] == []
    report = await get_json(client, "/add", image=str(photos["rocket"]))
    assert report["added"] == 1


async def _post_head(port: int, length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose body never comes: its headers promise `length` bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\nxx" % length
    )
    await writer.drain()
    return reader, writer


async def test_a_stalled_upload_ends_in_a_408_and_bodies_read_at_once_are_bounded(
    aiohttp_client: ClientFactory,
    config: Config,
    tiny_embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: a body that stopped arriving held its buffer for good, and any number were
    read at once (12 stalled 40 MB uploads pinned 540 MB)."""
    monkeypatch.setattr(bodies, "BODY_IDLE_S", 0.5)
    app = create_app(config, embedder=tiny_embedder)
    app[bodies.BODY_GATE] = Gate("upload", 1, retry_after=1)
    client = await aiohttp_client(app)
    reader, writer = await _post_head(client.port, 10**6)
    await asyncio.sleep(0.1)  # its handler is reading: the one place is taken
    upload = bytes(bodies.GATED_FROM)  # (smaller bodies are read at once, past the gate)
    busy = await client.post("/search", data=upload, headers={"Content-Type": "image/jpeg"})
    assert busy.status == 503 and busy.headers["Retry-After"] == "1"
    small = await client.post("/search", json={"vector": [1.0] * tiny_embedder.dim})
    assert small.status == 200
    answer = await asyncio.wait_for(reader.read(65536), 10)  # (the connection may linger)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["status"] == 408
    assert app[bodies.BODY_GATE].active == 0
