"""Routes: /watch, the folders followed as files come, change, move and go."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..errors import NotFound
from ..watch import Watcher
from ..watched import Watch
from .keys import SERVICE
from .offload import blocking
from .parsing import Params

table = web.RouteTableDef()


@table.get("/watch")
async def watch(request: web.Request) -> web.Response:
    """List the watched folders, or (with `dir`) start watching one."""
    service = request.app[SERVICE]
    params = Params(request.query)
    if "dir" not in params:
        return web.json_response({"watches": [w.as_json() for w in service.watcher.watches()]})
    folder = service.paths.resolve(params.get("dir"), name="dir")
    watched, created = await blocking(_watch, service.watcher, folder)
    return web.json_response(watched.as_json(), status=201 if created else 200)


def _watch(watcher: Watcher, folder: Path) -> tuple[Watch, bool]:
    """Start watching; a path that is a file is no folder to watch (404, as a missing one)."""
    if folder.exists() and not folder.is_dir():
        raise NotFound(f"not a folder: {folder}")
    return watcher.add(folder)


@table.delete("/watch")
async def unwatch(request: web.Request) -> web.Response:
    """Stop watching a folder; its images stay indexed."""
    service = request.app[SERVICE]
    folder = service.paths.resolve(Params(request.query).get("dir"), name="dir")
    stopped = await blocking(service.watcher.remove, folder)
    return web.json_response(stopped.as_json())
