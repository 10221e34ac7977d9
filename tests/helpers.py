"""Plain helpers for tests: sample photos, image bytes, free ports, the tiny model's config."""

from __future__ import annotations

import io
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image
from skimage import data as skdata

from imgsearch.comparators import Picture, Score

TINY_MODEL = "imgsearch-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
)

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def photo(name: str, size: int = 320) -> Image.Image:
    """A real sample photo from scikit-image, RGB, shorter side `size`."""
    arr = np.asarray(getattr(skdata, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((size * 4, size))
    return img


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


async def get_json(
    client: TestClient[web.Request, web.Application], path: str, status: int = 200, **params: Any
) -> Any:
    """GET with query parameters; check the status and return the JSON body."""
    resp = await client.get(path, params=params)
    body = await resp.json()
    assert resp.status == status, body
    return body


class Brightness:
    """A third-party style comparator plugin: mean brightness difference."""

    name = "brightness"
    description = "Mean brightness difference."
    raw_meaning = "absolute difference of mean grey levels, 0-255; lower is more similar"

    def features(self, picture: Picture) -> float:
        return float(picture.gray.mean())

    def compare(self, query: float, candidate: float) -> Score:
        raw = abs(query - candidate)
        return Score(raw, 1.0 - raw / 255.0)
