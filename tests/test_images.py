"""Decoding: draft-mode downscale, EXIF rotation, odd pixel formats, files that are not images."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch.errors import NotAnImage, NotFound, PayloadTooLarge
from imgsearch.images import decode, read_file

from .helpers import jpeg_bytes, photo

BIG = 200_000_000


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_large_jpeg_is_decoded_reduced() -> None:
    big = photo("astronaut", 512).resize((4000, 3000))
    out = decode(jpeg_bytes(big, quality=85), min_side=224, max_pixels=BIG)
    assert (out.width, out.height) == (4000, 3000)
    assert 224 <= min(out.image.size) < 448
    assert out.image.mode == "RGB"


def test_large_png_is_box_reduced() -> None:
    out = decode(encode(photo("coffee", 1200), "PNG"), min_side=224, max_pixels=BIG)
    assert 224 <= min(out.image.size) < 448


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (300, 200), "red")
    img.paste((0, 0, 255), (0, 0, 150, 200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode(jpeg_bytes(img, exif=exif.tobytes()), min_side=200, max_pixels=BIG)
    assert (out.width, out.height) == (200, 300)
    assert out.image.size == (200, 300)
    top = np.asarray(out.image)[5, 100]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


@pytest.mark.parametrize(
    "make",
    [
        lambda: photo("chelsea", 64).convert("CMYK"),
        lambda: photo("chelsea", 64).convert("L"),
        lambda: photo("chelsea", 64).convert("1"),
        lambda: photo("chelsea", 64).convert("LA"),
        lambda: photo("chelsea", 64).convert("RGBA"),
        lambda: photo("chelsea", 64).convert("P"),
        lambda: Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)),
    ],
    ids=["cmyk", "gray", "bilevel", "gray-alpha", "rgba", "palette", "16-bit"],
)
def test_odd_modes_become_rgb(make: object) -> None:
    img = make()  # type: ignore[operator]
    fmt = "JPEG" if img.mode == "CMYK" else "PNG" if img.mode != "1" else "BMP"
    out = decode(encode(img, fmt), min_side=64, max_pixels=BIG)
    assert out.image.mode == "RGB" and out.image.size == img.size
    assert np.asarray(out.image).std() > 5  # not flattened to one colour


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16"])
def test_exif_orientation_is_applied_whatever_the_mode(mode: str) -> None:
    """Images with an alpha channel, a transparent palette or 16 bits were converted into new
    images without EXIF first: sideways thumbnails and embeddings, with width and height
    reported turned."""
    img = Image.new("RGB", (300, 200), "red")
    img.paste((0, 0, 255), (0, 0, 150, 200))  # left half blue
    keep: dict[str, object] = {"transparency": 255} if mode == "P" else {}  # (an unused index)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img)[..., 2].astype(np.uint16) * 256)
    elif mode != "RGB":
        img = img.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode(encode(img, "PNG", exif=exif.tobytes(), **keep), min_side=200, max_pixels=BIG)
    upright = decode(encode(img, "PNG", **keep), min_side=200, max_pixels=BIG).image
    assert (out.width, out.height) == out.image.size == (200, 300)
    turned = upright.transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(out.image), np.asarray(turned))


@pytest.mark.parametrize("mode", ["RGBA", "L", "RGB", "P"])
def test_transparent_pixels_become_white(mode: str) -> None:
    """A colour key (PNG tRNS) on a grey or RGB image was flattened onto black."""
    img = Image.new("RGB", (40, 40), (255, 0, 0))
    img.paste((0, 0, 0), (0, 0, 20, 40))  # the left half the transparent colour
    if mode == "RGBA":
        img.putalpha(Image.eval(img.convert("L"), lambda v: 0 if v == 0 else 255))
        data = encode(img, "PNG")
    else:
        img = img.convert(mode)
        data = encode(img, "PNG", transparency=img.getpixel((0, 0)))
    pixels = np.asarray(decode(data, min_side=40, max_pixels=BIG).image)
    assert tuple(pixels[10, 5]) == (255, 255, 255)
    assert tuple(pixels[10, 30]) != (255, 255, 255)


def test_sixteen_bit_keeps_its_range() -> None:
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = decode(encode(Image.fromarray(arr), "PNG"), min_side=16, max_pixels=BIG)
    gray = np.asarray(out.image)[..., 0]
    assert gray.min() < 10 and gray.max() > 245


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    out = decode(data, min_side=32, max_pixels=BIG)
    r, g, b = np.asarray(out.image)[16, 16]
    assert r > 200 and g < 50 and b < 50


def test_heic_when_pillow_heif_is_installed() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    from imgsearch.images import enable_heif

    assert enable_heif()
    heif = pillow_heif.from_pillow(photo("coffee", 128))
    buf = io.BytesIO()
    heif.save(buf, quality=80)
    out = decode(buf.getvalue(), min_side=64, max_pixels=BIG)
    assert out.image.mode == "RGB" and min(out.width, out.height) == 128


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that declares huge dimensions."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text", "not a recognised image format"),
        (jpeg_bytes(photo("rocket", 128))[:300], "cannot decode image"),
        (_png_header_only(10_000, 10_000), "pixel limit"),
    ],
    ids=["empty", "text", "truncated", "huge-dimensions"],
)
def test_not_images_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(NotAnImage, match=reason):
        decode(data, min_side=32, max_pixels=50_000_000)


def test_decompression_bomb_limit_is_kept() -> None:
    with pytest.raises(NotAnImage, match="decompression bomb"):
        decode(_png_header_only(60_000, 60_000), min_side=32, max_pixels=10**12)


def test_read_file_refuses_fifos_dirs_and_big_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(NotAnImage, match="not a regular file"):
        read_file(fifo, 1000)  # returns at once: no writer is waited for
    with pytest.raises(NotAnImage, match="is a directory"):
        read_file(tmp_path, 1000)
    with pytest.raises(NotFound):
        read_file(tmp_path / "missing.jpg", 1000)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2000)
    with pytest.raises(PayloadTooLarge):
        read_file(big, 1000)
    data, st = read_file(big, 4000)
    assert len(data) == st.st_size == 2000
