"""Routes for living with a photo library: watched folders and duplicates."""

from __future__ import annotations

import asyncio
from functools import partial

from aiohttp import web

from ..duplicates import DEFAULT_THRESHOLD, check_threshold
from ..errors import BadRequest
from .filters import allowed_for, parse_filters
from .keys import DUPLICATES_LOCK, SERVICE
from .metadata import members_with_metadata

table = web.RouteTableDef()


@table.get("/duplicates")
async def duplicates(request: web.Request) -> web.Response:
    """Clusters of duplicates: byte-identical files first, then verified near copies."""
    service = request.app[SERVICE]
    threshold = _threshold(request.query.get("threshold"))
    filters = parse_filters(request)
    # One folder alone is the finder's own narrowing; more, or `where`, go by allowed ids.
    folder = filters.folders[0] if len(filters.folders) == 1 and not filters.where else None
    allowed = None if folder is not None else await allowed_for(request, filters)
    find = partial(service.duplicates.find, threshold, folder, allowed)
    loop = asyncio.get_running_loop()
    async with request.app[DUPLICATES_LOCK]:
        report = await loop.run_in_executor(None, find)
    store = service.catalog.store
    body = await loop.run_in_executor(None, members_with_metadata, store, report.as_json())
    return web.json_response(body)


def _threshold(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return DEFAULT_THRESHOLD
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"threshold must be a number, got {raw!r}") from None
    return check_threshold(value)


@table.get("/watch")
async def watch(request: web.Request) -> web.Response:
    """List the watched folders, or (with `dir`) start watching one."""
    service = request.app[SERVICE]
    if "dir" not in request.query:
        return web.json_response({"watches": [w.as_json() for w in service.watcher.watches()]})
    folder = service.paths.resolve(request.query["dir"], name="dir")
    loop = asyncio.get_running_loop()
    watched, created = await loop.run_in_executor(None, service.watcher.add, folder)
    return web.json_response(watched.as_json(), status=201 if created else 200)


@table.delete("/watch")
async def unwatch(request: web.Request) -> web.Response:
    """Stop watching a folder; its images stay indexed."""
    service = request.app[SERVICE]
    folder = service.paths.resolve(request.query.get("dir"), name="dir")
    loop = asyncio.get_running_loop()
    stopped = await loop.run_in_executor(None, service.watcher.remove, folder)
    return web.json_response(stopped.as_json())
