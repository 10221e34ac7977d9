"""Routes: /search (by a stored path, an upload, a URL, a text or a vector) and /comparators."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import BadRequest, ImgSearchError, PayloadTooLarge
from ..fetch import check_url
from ..search import Hit, SearchOptions
from ..service import Service
from . import parsing
from .filters import filtered
from .keys import FETCH, SEARCH_GATE, SERVICE
from .offload import blocking
from .parsing import Params
from .results import evidence_results, plain_results


@dataclass(frozen=True)
class Vector:
    """An embedding made elsewhere (POST /search with JSON `vector`)."""

    values: list[float]


Query = bytes | str | Path | Vector  # image bytes, a text, a stored file's path, or a vector


@dataclass(frozen=True)
class Download:
    """A query image still to download: fetched once the options have been checked."""

    url: object


ALTERNATIVES = ("image", "url", "text")
# Also accepted as body keys or form fields:
OPTIONS = ("limit", "compare", "rerank", "rerank_k", "evidence", "folder", "where")
NUMBERS = frozenset((int, float))  # the types of a vector's values as parsed from JSON

table = web.RouteTableDef()


@table.get("/search")
async def search_get(request: web.Request) -> web.Response:
    """By `image` (a path), `url` (downloaded, never stored) or `text`: exactly one."""
    params = Params(request.query)
    kind = params.one_of(*ALTERNATIVES)
    if kind is None:
        raise BadRequest("missing parameter: image (an absolute path), or url or text")
    return await _answer(request, _query(request, params, kind), params)


@table.post("/search")
async def search_post(request: web.Request) -> web.Response:
    """A multipart upload (field `image`), a raw image body, or JSON/a form naming the query."""
    query, params = await _posted(request, request.app[SERVICE].config.max_upload_bytes)
    return await _answer(request, query, params)


@table.get("/comparators")
async def comparators(request: web.Request) -> web.Response:
    registry = request.app[SERVICE].comparators
    listing = [
        {"name": c.name, "description": c.description, "raw": c.raw_meaning}
        for c in (registry.get(name) for name in registry.names())
    ]
    return web.json_response({"comparators": listing})


async def _answer(request: web.Request, query: Query | Download, params: Params) -> web.Response:
    service = request.app[SERVICE]
    options = await filtered(service, _options(service, params), params)
    evidence = parsing.flag(params.get("evidence"), "evidence")  # checked before any download
    if isinstance(query, Download):
        query = await download(request, query.url)
    image = query if isinstance(query, bytes | Path) else None  # a text or a vector: no pixels
    with request.app[SEARCH_GATE].enter():
        if image is None or not evidence:  # evidence needs pixels to draw on
            return web.json_response({"results": await blocking(_found, service, query, options)})
        hits = await blocking(_search, service, query, options)
        # (inside the gate: the evidence's matching costs what a verify search does)
        return web.json_response({"results": await evidence_results(service, image, hits)})


def _found(service: Service, query: Query, options: SearchOptions) -> list[dict[str, Any]]:
    """The hits as JSON with their metadata: the search and its answer in one hand-off."""
    return plain_results(service, _search(service, query, options))


def _search(service: Service, query: Query, options: SearchOptions) -> list[Hit]:
    if isinstance(query, Vector):
        return service.searcher.by_vector(query.values, options)
    if isinstance(query, bytes):
        return service.searcher.by_bytes(query, options)
    if isinstance(query, str):
        return service.searcher.by_text(query, options)
    return service.searcher.by_path(query, options)


def _options(service: Service, params: Params) -> SearchOptions:
    """Search options; `compare` is repeatable, each value a name or a comma-separated list."""
    compare = [name for value in params.getall("compare") for name in parsing.names(value)]
    return SearchOptions(
        limit=parsing.limit(params.get("limit")),
        comparators=service.comparators.parse(compare),
        rerank=parsing.flag(params.get("rerank"), "rerank", default=True),
        rerank_k=parsing.optional_limit(params.get("rerank_k"), "rerank_k"),
    )


def _query(request: web.Request, params: Params, kind: str) -> Query | Download:
    """The query that parameter `kind` (one of ALTERNATIVES) names."""
    if kind == "url":
        return Download(params.get("url"))
    if kind == "text":
        return parsing.text(params.get("text"))
    image = params.get("image")
    if isinstance(image, str) and image.startswith("data:"):
        return parsing.data_uri(image, request.app[SERVICE].config.max_upload_bytes)
    if image is not None and not isinstance(image, str):
        raise BadRequest("image must be a string: an absolute path or a data URI")
    return request.app[SERVICE].paths.resolve(image)


def _vector(raw: object) -> list[float]:
    """A JSON list of numbers (its length and values are checked by the searcher); a parser's
    numbers are exactly int or float (`true` is a bool), checked in one pass (13 µs at 512)."""
    if not isinstance(raw, list) or not set(map(type, raw)) <= NUMBERS:
        raise BadRequest("vector must be a JSON list of numbers")
    return raw


async def download(request: web.Request, raw: object) -> bytes:
    """Download a search query (never stored); errors name the URL."""
    url = check_url(raw)
    try:
        return (await request.app[FETCH].fetch(url)).data
    except ImgSearchError as exc:
        raise ImgSearchError(f"{url}: {exc.message}", exc.status) from None


def _no_other_query(request: web.Request) -> None:
    """An upload is the query: one named in the query string too is a 400, not ignored."""
    given = [name for name in (*ALTERNATIVES, "vector") if name in request.query]
    if given:
        raise BadRequest(
            f"the upload is the query image: give no {', '.join(given)} in the query string "
            "(give one of image, url, text or vector, not several)"
        )


async def _posted(request: web.Request, max_bytes: int) -> tuple[Query | Download, Params]:
    """The query of a POST and its parameters, by content type."""
    if request.content_length is not None and request.content_length > max_bytes * 2:
        raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        data, fields = await parsing.multipart(request, "image", max_bytes, OPTIONS)
        if data is None:
            raise BadRequest("multipart upload needs a file field named 'image'")
        _no_other_query(request)
        return data, Params(request.query, fields, "form")
    if ctype in {parsing.JSON_TYPE, parsing.FORM_TYPE}:
        if ctype == parsing.JSON_TYPE:
            params = Params(request.query, await parsing.json_object(request), "JSON body")
        else:
            params = Params(request.query, await parsing.form(request), "form")
        kind = params.one_of(*ALTERNATIVES, "vector")
        if kind is None:
            raise BadRequest(
                "the body needs 'image' (a path or a data:image/...;base64 URI), 'url', 'text' "
                "or (JSON) 'vector'"
            )
        if kind == "vector":
            return Vector(_vector(params.get("vector"))), params
        return _query(request, params, kind), params
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        _no_other_query(request)
        return await parsing.raw(request, max_bytes), Params(request.query)
    raise BadRequest(
        "POST /search takes multipart/form-data (file field 'image'), application/json or a "
        f"form with 'image' (a path or data URI), or a raw image body; got {ctype or 'nothing'}"
    )
