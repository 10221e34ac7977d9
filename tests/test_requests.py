"""Request parsing (imgsearch/web/parsing.py): one source per parameter, one multipart reader with
the same caps everywhere, and what the served OpenAPI document says the server accepts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from imgsearch.errors import BadRequest
from imgsearch.web.openapi import compare_pattern, document
from imgsearch.web.parsing import MAX_FIELDS, Params, loads, long_integer

from .helpers import get_json, jpeg_bytes, photo

Client = TestClient[web.Request, web.Application]


def test_a_parameter_given_twice_with_different_values_is_refused() -> None:
    params = Params(MultiDict({"limit": "5", "rerank": "1"}), {"limit": 5, "rerank": True})
    assert params.get("limit") == 5 and params.get("rerank") is True  # the same values: fine
    with pytest.raises(BadRequest, match="rerank_k is given in the query string"):
        Params(MultiDict({"rerank_k": "1001"}), {"rerank_k": "5"}, "form").get("rerank_k")
    with pytest.raises(BadRequest, match="give either image or text, not both"):
        Params(MultiDict({"image": "/a"}), {"text": "cat"}).one_of("image", "url", "text")
    assert Params(MultiDict([("compare", "a"), ("compare", "b")])).getall("compare") == ["a", "b"]


def test_bodies_read_by_orjson_or_json_read_as_json_reads_them() -> None:
    """parsing.loads (orjson) gives what the standard module gives, and where orjson refuses
    what json accepts (NaN, Infinity) or reads otherwise (integers past 64 bits) the standard
    module reads it (a surrogate pair's escapes too); what neither reads raises json's error
    (the 400's message). A lone surrogate, which json reads, is refused: test_hostile."""
    bodies = [
        '{"vector": [0.1, -2, 3.5e-7, 1e308], "limit": 10, "where": ["a:b"], "x": null}',
        '{"text": "caf\\u00e9 \u00e9", "a": {"b": [true, false]}, "a": 2}',  # duplicate key
        '{"vector": [1.0, NaN, -Infinity]}',
        '{"id": 123456789012345678901234567890, "n": -9223372036854775809}',
        '{"u": 18446744073709551615, "f": 0.12345678901234567890123}',
        '{"s": "\\ud83d\\ude00", "n": NaN}',
        "[1, 2]",
    ]
    for text in bodies:
        got, want = loads(text), json.loads(text)
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), text
    assert math.isnan(loads('{"v": [NaN]}')["v"][0])
    # A float's digits after zeros (a long run after the point) are read by orjson.
    assert not long_integer('{"v": [-0.0012345678266137838, 1.0000000000000000000002]}')
    assert long_integer('{"v": [1, -1234567890123456789]}')
    assert long_integer("12345678901234567890")
    for bad in ("{", '{"a": 1,}', "", "{'a': 1}"):
        with pytest.raises(json.JSONDecodeError):
            loads(bad)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(JSON_VALUES)
@settings(max_examples=300, deadline=None)
def test_any_json_text_reads_as_json_reads_it(value: Any) -> None:
    """Whatever the standard module writes (NaN, huge integers, any text) parsing.loads reads
    back to what json.loads gives."""
    text = json.dumps(value)
    assert repr(loads(text)) == repr(json.loads(text))


def _image_form(**fields: str | list[str]) -> FormData:
    form = FormData()
    form.add_field("image", jpeg_bytes(photo("chelsea", 64)), filename="q.jpg")
    for name, value in fields.items():
        for one in [value] if isinstance(value, str) else value:
            form.add_field(name, one)
    return form


async def test_query_and_form_field_that_disagree_answer_400(
    client: Client, photos: dict[str, Path]
) -> None:
    """Before: the form field silently won over the query (rerank_k=1001 was never checked)."""
    await get_json(client, "/add", image=str(photos["chelsea"].parent))
    resp = await client.post("/search?rerank_k=1001", data=_image_form(rerank_k="5"))
    body = await resp.json()
    assert resp.status == 400 and "rerank_k is given in the query string" in body["error"]
    resp = await client.post("/search?limit=2", data=_image_form(limit="2"))
    assert resp.status == 200 and len((await resp.json())["results"]) == 2
    resp = await client.post("/search?limit=2", json={"image": str(photos["coffee"]), "limit": 3})
    assert resp.status == 400 and "limit" in (await resp.json())["error"]
    resp = await client.post("/add?update=1", json={"image": str(photos["coffee"]), "update": 0})
    assert resp.status == 400 and "update" in (await resp.json())["error"]


async def test_every_multipart_body_has_the_same_field_caps(client: Client) -> None:
    """Before: the search upload read any number of fields (the CSV upload stopped at 32)."""
    too_many = _image_form(compare=["histogram"] * (MAX_FIELDS + 1))
    resp = await client.post("/search", data=too_many)
    assert resp.status == 400 and "more than 32 form fields" in (await resp.json())["error"]
    resp = await client.post("/search", data=_image_form(limit="1" * (64 * 1024 + 1)))
    assert resp.status == 413 and "form field" in (await resp.json())["error"]
    csv = FormData()
    csv.add_field("csv", b"url\nhttp://x/a.jpg\n", filename="u.csv", content_type="text/csv")
    for _ in range(MAX_FIELDS + 1):
        csv.add_field("wait", "0")
    resp = await client.post("/add", data=csv)
    assert resp.status == 400 and "more than 32 form fields" in (await resp.json())["error"]


async def test_unknown_form_fields_and_several_queries_answer_400(
    client: Client, photos: dict[str, Path]
) -> None:
    resp = await client.post("/search", data=_image_form(colour="red"))
    body = await resp.json()
    assert resp.status == 400 and "unknown form field 'colour'" in body["error"]
    body = await get_json(client, "/search", 400, image=str(photos["chelsea"]), text="a cat")
    assert "either image or text, not both" in body["error"]
    resp = await client.post("/search", json={"image": str(photos["chelsea"]), "url": "http://x/"})
    assert resp.status == 400 and "either image or url, not both" in (await resp.json())["error"]


async def test_a_long_query_line_is_answered_in_json(client: Client) -> None:
    """aiohttp's own 8 KiB request-line limit answered text/plain, before any middleware."""
    resp = await client.get("/search", params={"text": "a" * 20_000, "compare": "nope"})
    assert resp.status == 400 and resp.content_type == "application/json"


async def test_served_document_lists_this_daemons_comparators(client: Client) -> None:
    doc = await get_json(client, "/openapi.json")
    pattern = doc["components"]["schemas"]["CompareNames"]["pattern"]
    names = [c["name"] for c in (await get_json(client, "/comparators"))["comparators"]]
    assert names and pattern == compare_pattern(names)
    for good in (names[0], f" {names[0].upper()} ,", "", ",".join(names)):
        assert re.search(pattern, good), good
    for bad in ("nope", f"{names[0]}x", f"{names[0]};"):
        assert not re.search(pattern, bad), bad
        resp = await client.get("/search", params={"image": "/tmp/x.jpg", "compare": bad})
        assert resp.status == 400


def test_document_without_text_search_has_no_text_queries() -> None:
    variants = document(text_search=False)["components"]["schemas"]["SearchQuery"]["oneOf"]
    assert [v["$ref"].rsplit("/", 1)[1] for v in variants] == ["ImageQuery", "UrlQuery"]
    assert len(document()["components"]["schemas"]["SearchQuery"]["oneOf"]) == 3


def test_absolute_path_and_url_patterns_match_what_the_server_accepts() -> None:
    schemas = document()["components"]["schemas"]
    path, url = schemas["AbsolutePath"]["pattern"], schemas["HttpUrl"]["pattern"]
    assert re.search(path, "/home/me/x.jpg") and not re.search(path, "relative/x.jpg")
    assert not re.search(path, "/a\x00b")
    for good in ("https://example.com/a.jpg", "http://10.0.0.1:8080/x?y=1", "HTTP://a-b.c"):
        assert re.search(url, good), good
    for bad in ("ftp://x/y", "http://", "http://0/", "http://1.2/x", "http://a b/"):
        assert not re.search(url, bad), bad


async def test_a_bad_option_queues_no_job(client: Client, photos: dict[str, Path]) -> None:
    folder = str(photos["chelsea"].parent)
    body = await get_json(client, "/add", 400, image=folder, wait="maybe")
    assert "wait must be 0 or 1" in body["error"]
    assert (await get_json(client, "/jobs"))["jobs"] == []
