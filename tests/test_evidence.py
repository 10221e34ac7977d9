"""`evidence=1`: verify's matched region and inlier pairs, in the images' own pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from .helpers import get_json, jpeg_bytes, photo

Client = TestClient[web.Request, web.Application]


async def _search(client: Client, data: bytes, **params: str) -> dict:
    resp = await client.post(
        "/search", data=data, params=params, headers={"Content-Type": "image/jpeg"}
    )
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_crop_evidence_maps_query_points_onto_the_original(
    client: Client, photos: dict[str, Path]
) -> None:
    await get_json(client, "/add", image=str(photos["astronaut"].parent))
    cat = photo("chelsea")
    w, h = cat.size
    left, top = w // 5, h // 6
    crop = cat.crop((left, top, w * 4 // 5, h * 5 // 6))
    body = await _search(client, jpeg_bytes(crop, quality=90), compare="verify", evidence="1")
    first = body["results"][0]
    assert first["image"] == str(photos["chelsea"])
    ev = first["evidence"]
    assert ev["query_size"] == list(crop.size) and ev["image_size"] == [w, h]
    assert ev["inliers"] >= 15 and len(ev["matches"]) == min(ev["inliers"], 200)
    pairs = np.array(ev["matches"])
    # The crop is a translation of the original: each result point is its query point + offset.
    offsets = pairs[:, 2:] - pairs[:, :2]
    assert np.allclose(np.median(offsets, axis=0), [left, top], atol=2.0)
    assert (pairs[:, :2] >= -1).all() and (pairs[:, 0] <= crop.size[0] + 1).all()
    quad = np.array(ev["quad"])
    assert quad.shape == (4, 2)
    assert np.allclose(quad[0], [left, top], atol=4.0)
    assert np.allclose(quad[2], [w * 4 // 5, h * 5 // 6], atol=4.0)
    # Unrelated results get an evidence object with no region.
    others = [r for r in body["results"][1:] if r.get("verdict") == "similar"]
    assert others and all(r["evidence"]["quad"] is None for r in others)


async def test_evidence_only_when_asked_and_checked(
    client: Client, photos: dict[str, Path]
) -> None:
    await get_json(client, "/add", image=str(photos["chelsea"]))
    data = jpeg_bytes(photo("chelsea"))
    plain = await _search(client, data, compare="verify")
    assert "evidence" not in plain["results"][0]
    no_verify = await _search(client, data, evidence="1")
    assert "evidence" not in no_verify["results"][0]
    resp = await client.get(
        "/search", params={"image": str(photos["chelsea"]), "evidence": "maybe"}
    )
    assert resp.status == 400
    assert await resp.json() == {"error": "evidence must be 0 or 1, got 'maybe'", "status": 400}
    by_path = await get_json(
        client, "/search", image=str(photos["chelsea"]), compare="verify", evidence="1"
    )
    assert by_path["results"][0]["evidence"]["quad"] is not None


async def test_evidence_is_made_inside_the_search_gate(
    client: Client, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evidence's matching costs what a verify search does: --max-pending-searches counts
    it (it ran after the gate let the search go)."""
    from imgsearch.web import search as routes
    from imgsearch.web.keys import SEARCH_GATE

    active: list[int] = []
    made = routes.evidence_results

    async def counted(*args: Any) -> Any:
        active.append(client.app[SEARCH_GATE].active)
        return await made(*args)

    monkeypatch.setattr(routes, "evidence_results", counted)
    await get_json(client, "/add", image=str(photos["chelsea"].parent))
    await _search(client, jpeg_bytes(photo("chelsea"), quality=90), compare="verify", evidence="1")
    assert active == [1]
