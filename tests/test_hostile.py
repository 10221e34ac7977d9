"""A generated corpus of hostile files next to valid photos, through GET /add and GET /search.

Every valid file, however odd its format, must be indexed and find itself; every invalid one must
be reported with a reason, never crash the run, and as a query answer 4xx in the error shape.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from .helpers import get_json, jpeg_bytes, photo

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
