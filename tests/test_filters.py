"""folder= and where= filters, applied inside the FAISS search (ids allowed from SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.commands import filter_params

from .helpers import PHOTOS, get_json, photo

Client = TestClient[web.Request, web.Application]
META = {
    "astronaut": {"kind": "person", "colour": "white", "lot": 1},
    "chelsea": {"kind": "cat", "colour": "brown", "lot": 2},
    "coffee": {"kind": "cup", "colour": "brown", "lot": 3.0, "hot": True},
    "rocket": {"kind": "rocket", "colour": "white", "hot": False},
}


@pytest.fixture
async def library(client: Client, tmp_path: Path) -> Path:
    """Eight photos: four at the top (with metadata), four in sub/."""
    root = tmp_path / "lib"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(PHOTOS):
        photo(name).save((root if i < 4 else root / "sub") / f"{name}.jpg", quality=90)
    await get_json(client, "/add", image=str(root))
    for name, meta in META.items():
        body = {"image": str(root / f"{name}.jpg"), "metadata": meta}
        assert (await client.post("/metadata", json=body)).status == 200
    return root


async def _names(client: Client, path: str = "/search", **params: Any) -> list[str]:
    resp = await client.get(path, params=params)
    body = await resp.json()
    assert resp.status == 200, body
    return [Path(r["image"]).stem for r in body["results"]]


async def test_folder_filters_return_limit_results_from_those_folders(
    client: Client, library: Path
) -> None:
    query = str(library / "astronaut.jpg")
    sub = await _names(client, image=query, folder=str(library / "sub"), limit="3")
    assert len(sub) == 3 and set(sub) <= set(PHOTOS[4:])
    everything = await _names(client, image=query, limit="100")
    assert everything[0] == "astronaut" and len(everything) == len(PHOTOS)
    both = await _names(
        client,
        image=query,
        folder=[str(library / "sub"), str(library / "astronaut.jpg")],
        limit="100",
    )
    assert sorted(both) == sorted([*PHOTOS[4:], "astronaut"])
    assert await _names(client, image=query, folder=str(library / "nowhere")) == []
    # A folder that is a prefix of another's name is not its parent.
    assert await _names(client, image=query, folder=str(library / "su")) == []


async def test_where_filters_and_across_keys_or_within_one(client: Client, library: Path) -> None:
    query = str(library / "chelsea.jpg")
    brown = await _names(client, image=query, where="colour:brown", limit="100")
    assert sorted(brown) == ["chelsea", "coffee"]
    either = await _names(client, image=query, where=["kind:cat", "kind:rocket"], limit="100")
    assert sorted(either) == ["chelsea", "rocket"]
    both = await _names(client, image=query, where=["colour:white", "kind:rocket"])
    assert both == ["rocket"]
    # Numbers and booleans match their text: 3.0 is "3", True is "true".
    assert await _names(client, image=query, where="lot:3") == ["coffee"]
    assert await _names(client, image=query, where="hot:true") == ["coffee"]
    assert await _names(client, image=query, where="hot:false") == ["rocket"]
    assert await _names(client, image=query, where="nokey:x") == []
    assert await _names(client, image=query, where="colour:") == []
    mixed = await _names(client, image=query, where="colour:white", folder=str(library / "sub"))
    assert mixed == []
    texts = await _names(client, text="a photo", where="colour:brown", limit="100")
    assert sorted(texts) == ["chelsea", "coffee"]
    resp = await client.post(
        "/search",
        json={"image": query, "where": ["colour:brown"], "folder": [str(library)], "limit": 50},
    )
    assert sorted(Path(r["image"]).stem for r in (await resp.json())["results"]) == [
        "chelsea",
        "coffee",
    ]


async def test_malformed_filters_are_400(client: Client, library: Path) -> None:
    query = str(library / "chelsea.jpg")
    for params, words in (
        ({"where": "colour"}, "where must be KEY:VALUE"),
        ({"where": ":brown"}, "where must be KEY:VALUE"),
        ({"folder": "relative/dir"}, "folder must be an absolute path"),
        ({"folder": ""}, "missing parameter: folder"),
    ):
        body = await get_json(client, "/search", 400, image=query, **params)
        assert words in body["error"] and body["status"] == 400
        body = await get_json(client, "/duplicates", 400, **params)
        assert words in body["error"]
    resp = await client.post("/search", json={"image": query, "where": [1]})
    assert resp.status == 400
    assert "where must be a string or a list" in (await resp.json())["error"]


async def test_duplicates_with_filters(client: Client, library: Path) -> None:
    copy = library / "sub" / "chelsea-copy.jpg"
    copy.write_bytes((library / "chelsea.jpg").read_bytes())
    await get_json(client, "/add", image=str(copy))
    all_clusters = (await get_json(client, "/duplicates"))["clusters"]
    assert len(all_clusters) == 1 and len(all_clusters[0]["images"]) == 2
    cats = await get_json(client, "/duplicates", where="kind:cat")
    assert cats["clusters"] == [] and cats["images"] == 1  # the copy has no metadata
    body = {"image": str(copy), "metadata": {"kind": "cat"}}
    assert (await client.post("/metadata", json=body)).status == 200
    cats = await get_json(client, "/duplicates", where="kind:cat")
    assert [len(c["images"]) for c in cats["clusters"]] == [2]
    split = await get_json(
        client, "/duplicates", folder=[str(library / "sub"), str(library / "coffee.jpg")]
    )
    assert split["clusters"] == [] and split["images"] == 6  # sub/ (5) and the cup


def test_cli_filter_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert filter_params(["a", "/b"], ["k:v", "k:w"]) == [
        ("folder", str(tmp_path / "a")),
        ("folder", "/b"),
        ("where", "k:v"),
        ("where", "k:w"),
    ]
    assert filter_params("sub", []) == [("folder", str(tmp_path / "sub"))]
    assert filter_params(None, []) == []
