"""Route handlers: parse and check parameters, run CPU work in executors, answer JSON."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import BadRequest, ImgSearchError, PayloadTooLarge
from ..metadata import check_metadata, metadata_writer
from ..search import Hit, SearchOptions
from ..service import Service
from .addcsv import CsvAdd, posted_csv_add
from .filters import filtered
from .keys import SEARCH_GATE, SERVICE
from .results import results_response
from .urls import is_csv, query_bytes, url_list

T = TypeVar("T")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

table = web.RouteTableDef()


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


async def _run(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(fn, *args, **kwargs))


# -- parameters ------------------------------------------------------------------------------


def _limit(raw: Any, name: str = "limit") -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        if isinstance(raw, bool | float):
            raise ValueError(raw)
        limit = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"{name} must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _flag(raw: Any, name: str) -> bool:
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadRequest(f"{name} must be 0 or 1, got {raw!r}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _data_uri(uri: str, max_bytes: int) -> bytes:
    """Bytes of a `data:image/...;base64,...` URI."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise BadRequest("image must be an absolute path or a data:image/...;base64,... URI")
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"image is over the {max_bytes}-byte upload limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image data URI is not valid base64") from None


async def _multipart(
    request: web.Request, max_bytes: int, params: dict[str, Any], compare: list[str]
) -> bytes | None:
    """The `image` part's bytes; other parts go to `params` (and `compare`)."""
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if part.name == "image":
            data = await _read_part(part, max_bytes)
        elif part.name:
            value = (await _read_part(part, 64 * 1024)).decode(errors="replace")
            if part.name == "compare":
                compare.append(value)
            else:
                params[part.name] = value
    return data


async def _read_part(part: BodyPartReader, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


# -- routes ----------------------------------------------------------------------------------


@table.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@table.get("/stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(_service(request).stats())


async def _add(
    request: web.Request,
    body: Mapping[str, Any],
    urls: list[str] | None = None,
    csv_add: CsvAdd | None = None,
) -> web.Response:
    """Queue an add of a path or of URLs; wait for it (the blocking form) unless wait=0."""
    service = _service(request)
    raw_path = body.get("image")
    if raw_path is not None and not isinstance(raw_path, str):
        raise BadRequest("image must be a string path")
    update, strict = _flag(body.get("update"), "update"), False
    if urls is None and csv_add is None:
        urls, strict = url_list(body)
    after = _metadata_after(service, body, raw_path, urls)
    if csv_add is not None and csv_add.files is not None:
        store = service.catalog.store
        after = metadata_writer(store, csv_add.by_path) if csv_add.by_path else None
        job = service.jobs.submit_files(csv_add.files, update, after, csv_add.errors)
    elif csv_add is not None and csv_add.urls is not None:
        after = metadata_writer(service.catalog.store, {}, csv_add.by_url)
        job = service.jobs.submit_urls(csv_add.urls, update, after=after)
    elif urls is None:
        job = service.jobs.submit(service.paths.resolve(raw_path), update, after)
    elif raw_path is not None:
        raise BadRequest("give either image or url/urls, not both")
    else:
        job = service.jobs.submit_urls(urls, update, strict=strict, after=after)
    if not _flag(body.get("wait", "1"), "wait"):
        location = f"/jobs/{job.id}"
        return web.json_response(
            {"job": job.id, "state": job.state, "url": location},
            status=202,
            headers={"Location": location},
        )
    while not job.ended.is_set():  # polling keeps no thread blocked for an hours-long add
        await asyncio.sleep(0.1)
    if job.state == "failed":
        raise ImgSearchError(job.error or "indexing failed", job.error_status)
    return web.json_response(job.report.as_json())


def _metadata_after(
    service: Service, body: Mapping[str, Any], raw_path: Any, urls: list[str] | None
) -> Callable[[Any], None] | None:
    """The hook that gives the added image (one file, or each URL) the body's `metadata`."""
    if body.get("metadata") is None:
        return None
    metadata = check_metadata(body["metadata"])
    store = service.catalog.store
    if urls is not None:
        return metadata_writer(store, {}, {url: metadata for url in urls})
    path = service.paths.resolve(raw_path)
    if not path.is_file():
        raise BadRequest("metadata is for one image: give a file, not a folder")
    return metadata_writer(store, {str(path): metadata})


@table.get("/add")
async def add_get(request: web.Request) -> web.Response:
    urls = request.query.getall("url", [])  # repeatable: several are a list, one is strict
    return await _add(request, request.query, urls if len(urls) > 1 else None)


@table.post("/add")
async def add_post(request: web.Request) -> web.Response:
    """JSON (a path, `url` or `urls`), or a CSV of URLs: raw text/csv or a multipart `csv`."""
    if is_csv(request):
        service = _service(request)
        table = await posted_csv_add(request, service.config.max_upload_bytes, service.paths)
        return await _add(request, {**request.query, **table.fields}, csv_add=table)
    return await _add(request, {**request.query, **await _json_body(request)})


@table.post("/jobs")
async def jobs_post(request: web.Request) -> web.Response:
    return await _add(request, {**await _json_body(request), "wait": "0"})


@table.get("/jobs")
async def jobs_list(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [job.as_json() for job in _service(request).jobs.list()]})


@table.get("/jobs/{id}")
async def jobs_get(request: web.Request) -> web.Response:
    return web.json_response(_service(request).jobs.get(request.match_info["id"]).as_json())


@table.delete("/jobs/{id}")
async def jobs_cancel(request: web.Request) -> web.Response:
    jobs = _service(request).jobs
    job = await _run(request, jobs.cancel, jobs.get(request.match_info["id"]).id)
    return web.json_response(job.as_json())


def _options(service: Service, params: Mapping[str, Any], compare: list[str]) -> SearchOptions:
    """Search options from query parameters or a body (`compare` repeatable or comma lists)."""
    limit = _limit(params.get("limit"))
    rerank_k = params.get("rerank_k")
    if rerank_k is not None and rerank_k != "":
        rerank_k = _limit(rerank_k, name="rerank_k")
    return SearchOptions(
        limit=limit,
        comparators=service.comparators.parse(compare),
        rerank=_flag(params.get("rerank", "1"), "rerank"),
        rerank_k=rerank_k or None,
    )


def _compare_list(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return raw
    raise BadRequest("compare must be a name or a list of names")


@table.get("/search")
async def search_get(request: web.Request) -> web.Response:
    service = _service(request)
    options = _options(service, request.query, request.query.getall("compare", []))
    options = await filtered(request, options)
    text, url = request.query.get("text"), request.query.get("url")
    if url is not None:
        _only_url(request.query)
        query: bytes | str | Path = await query_bytes(request, url)
        search: Callable[..., list[Hit]] = service.searcher.by_bytes
    elif text is not None:
        query, search = _text(text, request.query.get("image")), service.searcher.by_text
    else:
        query, search = service.paths.resolve(request.query.get("image")), service.searcher.by_path
    with request.app[SEARCH_GATE].enter():
        hits = await _run(request, search, query, options)
    return await results_response(request, query, hits, request.query)


@table.post("/search")
async def search_post(request: web.Request) -> web.Response:
    """A multipart upload (field `image`), a raw image body, or JSON with a path or data URI."""
    service = _service(request)
    query, params, compare = await _posted_query(request, service.config.max_upload_bytes)
    options = await filtered(request, _options(service, params, compare), params)
    with request.app[SEARCH_GATE].enter():
        if isinstance(query, bytes):
            hits = await _run(request, service.searcher.by_bytes, query, options)
        elif isinstance(query, str):
            hits = await _run(request, service.searcher.by_text, query, options)
        else:
            hits = await _run(request, service.searcher.by_path, query, options)
    return await results_response(request, query, hits, params)


def _only_url(params: Mapping[str, Any]) -> None:
    if "image" in params or "text" in params:
        raise BadRequest("give one of image, url or text")


def _text(text: Any, image: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("text must be a non-empty string")
    if image is not None:
        raise BadRequest("give either image or text, not both")
    return text.strip()


async def _posted_query(
    request: web.Request, max_bytes: int
) -> tuple[bytes | Path | str, dict[str, Any], list[str]]:
    """The query (image bytes, a path to read, or a text), its parameters and comparators."""
    if request.content_length is not None and request.content_length > max_bytes * 2:
        raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
    params: dict[str, Any] = dict(request.query)
    compare = request.query.getall("compare", [])
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        try:
            data = await _multipart(request, max_bytes, params, compare)
        except (HttpProcessingError, ValueError) as exc:  # malformed framing or part headers
            raise BadRequest(f"malformed multipart body: {exc}") from None
        if data is None:
            raise BadRequest("multipart upload needs a file field named 'image'")
        return data, params, compare
    if ctype in {"application/json", "application/x-www-form-urlencoded"}:
        if ctype == "application/json":
            body = await _json_body(request)
            compare += _compare_list(body.pop("compare", None))
        else:
            form = await request.post()
            compare += [v for v in form.getall("compare", []) if isinstance(v, str)]
            body = {k: v for k, v in form.items() if isinstance(v, str) and k != "compare"}
        params.update(body)
        if "url" in params:
            _only_url(params)
            return await query_bytes(request, params.pop("url")), params, compare
        if "text" in params:
            return _text(params.pop("text"), params.get("image")), params, compare
        image = params.pop("image", None)
        if not isinstance(image, str) or not image:
            raise BadRequest("the body needs 'image': a path or a data:image/...;base64 URI")
        if image.startswith("data:"):
            return _data_uri(image, max_bytes), params, compare
        return _service(request).paths.resolve(image), params, compare
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.read()
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
        return data, params, compare
    raise BadRequest(
        "POST /search takes multipart/form-data (file field 'image'), application/json or a "
        f"form with 'image' (a path or data URI), or a raw image body; got {ctype or 'nothing'}"
    )


@table.get("/comparators")
async def comparators(request: web.Request) -> web.Response:
    registry = _service(request).comparators
    listing = [
        {"name": c.name, "description": c.description, "raw": c.raw_meaning}
        for c in (registry.get(name) for name in registry.names())
    ]
    return web.json_response({"comparators": listing})


@table.get("/remove")
async def remove(request: web.Request) -> web.Response:
    target = _service(request).paths.resolve(request.query.get("image"))
    removed = await _run(request, _service(request).remove, target)
    return web.json_response({"removed": removed})
