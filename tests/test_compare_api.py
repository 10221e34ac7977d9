"""Comparators through the HTTP API: annotation, re-ranking, plugins, cache, robustness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from imgsearch.web.keys import SERVICE

from .helpers import Brightness, get_json, photo

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def gallery(client: Client, tmp_path: Path) -> Path:
    folder = tmp_path / "gallery"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins"):
        photo(name, 360).save(folder / f"{name}.jpg", quality=92)
    assert (await get_json(client, "/add", image=str(folder)))["added"] == 6
    return folder


def crop_of(name: str, tmp_path: Path) -> Path:
    img = photo(name, 360)
    w, h = img.size
    path = tmp_path / f"query-{name}.jpg"
    img.crop((w // 5, h // 5, w * 4 // 5, h * 4 // 5)).resize((400, 300)).save(path)
    return path


async def test_each_result_carries_numeric_scores(
    client: Client, gallery: Path, tmp_path: Path
) -> None:
    query = crop_of("chelsea", tmp_path)
    body = await get_json(
        client, "/search", image=str(query), limit=6, compare=["sift,orb", "ssim"]
    )
    assert len(body["results"]) == 6
    for hit in body["results"]:
        assert set(hit["compare"]) == {"sift", "orb", "ssim"}
        for name, value in hit["compare"].items():
            assert isinstance(value["raw"], float | int), name
            assert 0.0 <= value["score"] <= 1.0
        assert isinstance(hit["score"], float) and isinstance(hit["rank_before"], int)
    assert sorted(h["rank_before"] for h in body["results"]) == list(range(1, 7))
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


async def test_verified_copy_moves_to_the_top(
    client: Client, gallery: Path, tmp_path: Path
) -> None:
    """The tiny test model's random weights rank by chance; geometric evidence must win."""
    for name in ("chelsea", "rocket", "coffee"):
        query = crop_of(name, tmp_path)
        plain = await get_json(client, "/search", image=str(query), limit=6)
        body = await get_json(client, "/search", image=str(query), limit=6, compare="verify")
        first = body["results"][0]
        assert first["image"] == str(gallery / f"{name}.jpg")
        assert first["verdict"] == "edited" and first["compare"]["verify"]["inliers"] >= 15
        assert all(h["verdict"] == "similar" for h in body["results"][1:])
        embedding_rank = [h["image"] for h in plain["results"]].index(first["image"]) + 1
        assert first["rank_before"] == embedding_rank
        assert first["distance"] == pytest.approx(
            plain["results"][embedding_rank - 1]["distance"], abs=1e-3
        )


async def test_duplicate_verdict_and_rerank_off(
    client: Client, gallery: Path, tmp_path: Path
) -> None:
    query = tmp_path / "resized.jpg"
    photo("coffee", 360).resize((240, 160)).save(query, quality=40)
    body = await get_json(client, "/search", image=str(query), limit=6, compare="verify", rerank=0)
    assert [h["rank_before"] for h in body["results"]] == list(range(1, 7))
    verdicts = {Path(h["image"]).stem: h["verdict"] for h in body["results"]}
    assert verdicts["coffee"] == "duplicate"
    assert [v for k, v in verdicts.items() if k != "coffee"] == ["similar"] * 5


async def test_unknown_comparator_is_400_with_valid_names(client: Client, gallery: Path) -> None:
    body = await get_json(client, "/search", 400, image=str(gallery / "coins.jpg"), compare="magic")
    assert "magic" in body["error"]
    for name in ("basic", "sift", "ssim", "histogram", "orb", "verify"):
        assert name in body["error"]
    listing = await get_json(client, "/comparators")
    assert [c["name"] for c in listing["comparators"]] == sorted(
        ["basic", "sift", "ssim", "histogram", "orb", "verify"]
    )


async def test_post_search_takes_compare(client: Client, gallery: Path) -> None:
    resp = await client.post(
        "/search",
        json={"image": str(gallery / "rocket.jpg"), "limit": 2, "compare": ["histogram"]},
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["results"][0]["image"] == str(gallery / "rocket.jpg")
    assert body["results"][0]["compare"]["histogram"]["score"] == pytest.approx(1.0, abs=0.01)


async def test_a_registered_plugin_is_used_through_the_api(client: Client, gallery: Path) -> None:
    client.app[SERVICE].comparators.register(Brightness())
    body = await get_json(
        client, "/search", image=str(gallery / "camera.jpg"), compare="brightness"
    )
    top = body["results"][0]
    assert top["image"] == str(gallery / "camera.jpg")
    assert top["compare"]["brightness"] == {"raw": 0.0, "score": 1.0}


async def test_feature_cache_is_filled_and_cleared_on_remove(
    client: Client, gallery: Path, config: Any
) -> None:
    await get_json(client, "/search", image=str(gallery / "coins.jpg"), compare="sift")
    cached = list((config.data_dir / "cache" / "features" / "sift").glob("*"))
    assert len(cached) == 6
    await get_json(client, "/remove", image=str(gallery / "coins.jpg"))
    assert len(list((config.data_dir / "cache" / "features" / "sift").glob("*"))) == 5


async def test_vanished_or_hostile_candidates_do_not_break_search(
    client: Client, gallery: Path, tmp_path: Path
) -> None:
    (gallery / "rocket.jpg").unlink()
    (gallery / "coffee.jpg").write_text("no longer an image")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (300, 200), (120, 120, 120)).save(flat)
    tiny = tmp_path / "tiny.png"
    Image.new("L", (3, 3), 7).save(tiny)
    for query in (flat, tiny, gallery / "coins.jpg"):
        body = await get_json(
            client,
            "/search",
            image=str(query),
            limit=6,
            compare="basic,sift,ssim,histogram,orb,verify",
        )
        by_name = {Path(h["image"]).stem: h for h in body["results"]}
        assert "no such file" in by_name["rocket"]["error"]
        assert "not a recognised image" in by_name["coffee"]["error"]
        assert by_name["rocket"]["compare"] == {} and by_name["coffee"]["compare"] == {}
        for hit in body["results"]:
            assert all(0.0 <= v["score"] <= 1.0 for v in hit["compare"].values())
