"""Text -> image search with CLIP; a clear 400 for models without a text tower."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app

from .helpers import ClientFactory, get_json

Client = TestClient[web.Request, web.Application]


async def test_text_search_ranks_by_text_image_cosine(
    client: Client, photos: dict[str, Path], tiny_embedder: Embedder
) -> None:
    await get_json(client, "/add", image=str(photos["chelsea"].parent))
    body = await get_json(client, "/search", text="a cat on a sofa", limit=5)
    results = body["results"]
    assert len(results) == 5
    text = tiny_embedder.embed_texts(["a cat on a sofa"])[0]  # type: ignore[attr-defined]
    images = tiny_embedder.embed_images([Image.open(r["image"]).convert("RGB") for r in results])
    expected = [1.0 - float(v @ text) for v in images]
    assert [r["distance"] for r in results] == pytest.approx(expected, abs=2e-3)
    assert expected == sorted(expected)

    resp = await client.post("/search", json={"text": "a cat on a sofa", "limit": 2})
    assert (await resp.json())["results"] == results[:2]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"text": "  "}, "non-empty"),
        ({"text": "cat", "image": "/x.jpg"}, "either image or text"),
        ({"text": "cat", "compare": "sift"}, "compare needs an image query"),
    ],
)
async def test_bad_text_queries(client: Client, params: dict[str, str], fragment: str) -> None:
    body = await get_json(client, "/search", 400, **params)
    assert fragment in body["error"]


@pytest.mark.slow  # loads the real model
async def test_model_without_text_tower_is_400(
    aiohttp_client: ClientFactory, tmp_path: Path, lite0: Embedder
) -> None:
    config = Config(data_dir=tmp_path / "d", model="efficientnet-lite0").resolved()
    client = await aiohttp_client(create_app(config, embedder=lite0))
    body = await get_json(client, "/search", 400, text="a red bicycle")
    assert "no text tower" in body["error"] and "efficientnet-lite0" in body["error"]
