"""Comparators through the HTTP API: annotation, re-ranking, plugins, cache, robustness."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
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


class Unruly:
    """A plugin that misbehaves on some images: a score outside 0..1, an infinite one, a bare
    float instead of a Score, features that fail on small queries and on one stored image."""

    description = "misbehaves"
    raw_meaning = "none"

    def __init__(self, name: str, answer: Any) -> None:
        self.name = name
        self.answer = answer

    def features(self, picture: Any) -> float:
        if picture.width < 100:
            raise ValueError("too small for me")
        return float(picture.gray.mean())

    def compare(self, query: float, candidate: float) -> Any:
        return self.answer


async def test_a_plugins_bad_scores_and_failures_cost_only_its_own_scores(
    client: Client, gallery: Path, tmp_path: Path
) -> None:
    """A plugin's 7.0 outweighed every other comparator, its inf made a 200 that was not JSON,
    a bare float, a raw measure that is not a number, an array among its extras or features
    failing on the query made every such search a 500, and features
    failing on one stored image dropped that image's built-in scores too."""
    from imgsearch.comparators import Score

    registry = client.app[SERVICE].comparators
    answers = {
        "huge": Score(7.0, 7.0),
        "endless": Score(1.0, float("inf")),
        "bare": 0.9,
        "rawless": Score(None, 0.5),  # type: ignore[arg-type]
        "arrays": Score(1.0, 0.5, {"hist": np.zeros(3), "bins": 3, "nan": [float("nan")]}),
    }
    for name, answer in answers.items():
        registry.register(Unruly(name, answer))
    query = str(gallery / "camera.jpg")
    compare = "histogram,huge,endless,bare,rawless,arrays"
    body = await get_json(client, "/search", image=query, compare=compare)
    for hit in body["results"]:
        assert set(hit["compare"]) == {"histogram", "huge", "arrays"}
        assert hit["compare"]["huge"] == {"raw": 7.0, "score": 1.0}
        assert hit["compare"]["arrays"] == {"raw": 1.0, "score": 0.5, "bins": 3}
    small = tmp_path / "small.png"
    photo("camera", 360).resize((80, 60)).save(small)
    body = await get_json(client, "/search", image=str(small), compare="histogram,huge")
    assert all(set(h["compare"]) == {"histogram"} for h in body["results"])
    photo("coins", 360).resize((90, 90)).save(gallery / "coins.jpg")  # stored, now too small
    body = await get_json(client, "/search", image=query, compare="histogram,huge", limit=6)
    by_name = {Path(h["image"]).stem: h for h in body["results"]}
    assert set(by_name["coins"]["compare"]) == {"histogram"} and "error" not in by_name["coins"]
    assert set(by_name["chelsea"]["compare"]) == {"histogram", "huge"}


async def test_a_file_gone_or_replaced_is_never_scored_from_the_cache(
    client: Client, gallery: Path
) -> None:
    """The cached features were used whatever the file had become: a deleted file came back as
    a verified duplicate, and one replaced by another photo with its mtime kept (`cp -p`,
    `rsync -a`) kept the old photo's verdict, its thumbnail too."""
    service = client.app[SERVICE]
    cat = gallery / "chelsea.jpg"
    first = await get_json(client, "/search", image=str(cat), compare="verify")
    assert first["results"][0]["verdict"] == "duplicate"
    [row] = service.catalog.store.file_states([str(cat)]).values()
    old_thumbnail = service.thumbnails.get(row.id, cat)
    st = cat.stat()
    photo("coins", 360).save(cat, quality=92)  # another photo, its mtime set back
    os.utime(cat, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert service.thumbnails.get(row.id, cat) == service.thumbnails.make(cat.read_bytes())
    assert service.thumbnails.get(row.id, cat) != old_thumbnail
    body = await get_json(client, "/search", image=str(gallery / "coins.jpg"), compare="verify")
    by_name = {Path(h["image"]).stem: h for h in body["results"]}
    assert by_name["chelsea"]["compare"]["verify"]["inliers"] > 50, "the coins it now holds"
    cat.unlink()
    body = await get_json(client, "/search", image=str(gallery / "coins.jpg"), compare="verify")
    by_name = {Path(h["image"]).stem: h for h in body["results"]}
    assert "no such file" in by_name["chelsea"]["error"] and by_name["chelsea"]["compare"] == {}
