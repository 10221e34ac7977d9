"""Routes for living with a photo library: watched folders and duplicates."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .keys import SERVICE

table = web.RouteTableDef()


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
