"""Routes about the library as a whole: /health, /stats and /remove."""

from __future__ import annotations

from aiohttp import web

from .keys import SERVICE
from .offload import blocking
from .parsing import Params

table = web.RouteTableDef()


@table.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@table.get("/stats")
async def stats(request: web.Request) -> web.Response:
    # In memory only (Service.stats): on the loop, no hop to a worker thread and back.
    return web.json_response(request.app[SERVICE].stats())


@table.get("/remove")
async def remove(request: web.Request) -> web.Response:
    """Forget a file, or every image under a folder; the files are not touched."""
    service = request.app[SERVICE]
    target = service.paths.resolve(Params(request.query).get("image"))
    removed = await blocking(service.remove, target)
    return web.json_response({"removed": removed})
