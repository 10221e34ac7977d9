"""Routes for vectors in bulk: import Parquet shards, export the library (each a job)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest
from . import parsing
from .keys import SERVICE
from .offload import blocking, until_set
from .parsing import Params

table = web.RouteTableDef()


def _path_map(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise BadRequest("path_map must be a list of 'OLD=NEW' strings")
    return list(raw)


def _wait(params: Params) -> bool:
    """A POST's `wait`: true or false in the JSON body, 0/1 (or yes/no...) in the query."""
    wait = params.get("wait")
    if "wait" in params.body and not isinstance(wait, bool):
        raise BadRequest(f"wait must be true or false, got {wait!r}")
    return parsing.flag(wait, "wait", False)


@table.post("/import")
async def import_post(request: web.Request) -> web.Response:
    """Import a folder of Parquet shards: {"dir": "/abs", "wait": false, "path_map": [...],
    "earlier_model": false}."""
    service = request.app[SERVICE]
    params = Params(request.query, await parsing.json_object(request), "JSON body")
    if not isinstance(params.get("dir"), str):
        raise BadRequest("dir must be a string path")
    folder = service.paths.resolve(params.get("dir"), name="dir")
    wait = _wait(params)
    earlier = params.get("earlier_model", False)
    if not isinstance(earlier, bool):
        raise BadRequest(f"earlier_model must be true or false, got {earlier!r}")
    path_map = _path_map(params.get("path_map"))
    job = await blocking(service.imports.submit, folder, path_map, earlier)
    if not wait:
        location = f"/import/{job.id}"
        return web.json_response(job.as_json(), status=202, headers={"Location": location})
    await until_set(job.ended)
    return web.json_response(job.as_json())


@table.get("/import")
async def import_list(request: web.Request) -> web.Response:
    jobs = request.app[SERVICE].imports.list()
    return web.json_response({"imports": [job.as_json() for job in jobs]})


@table.get("/import/{id}")
async def import_get(request: web.Request) -> web.Response:
    job = request.app[SERVICE].imports.get(request.match_info["id"])
    return web.json_response(job.as_json())


@table.delete("/import/{id}")
async def import_cancel(request: web.Request) -> web.Response:
    imports = request.app[SERVICE].imports
    job_id = imports.get(request.match_info["id"]).id
    job = await blocking(imports.cancel, job_id)
    return web.json_response(job.as_json())


async def _export(request: web.Request, raw: Any, wait: bool) -> web.Response:
    service = request.app[SERVICE]
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("missing parameter: dir (a string path)")
    folder = service.paths.resolve(raw, name="dir")  # (absolute, no NUL, allowed)
    job = await blocking(service.exports.submit, folder)
    if not wait:
        location = f"/export/{job.id}"
        return web.json_response(job.as_json(), status=202, headers={"Location": location})
    await until_set(job.ended)
    return web.json_response(job.as_json())


@table.get("/export")
async def export_get(request: web.Request) -> web.Response:
    """Export the library into `dir` (new or empty), answering when done (wait=false: at once,
    202); with no dir, every export, newest first."""
    params = Params(request.query)
    wait = parsing.flag(params.get("wait"), "wait", True)
    if "dir" not in params:
        jobs = request.app[SERVICE].exports.list()
        return web.json_response({"exports": [job.as_json() for job in jobs]})
    return await _export(request, params.get("dir"), wait)


@table.post("/export")
async def export_post(request: web.Request) -> web.Response:
    """Export the library: {"dir": "/abs", "wait": false}."""
    params = Params(request.query, await parsing.json_object(request), "JSON body")
    return await _export(request, params.get("dir"), _wait(params))


@table.get("/export/{id}")
async def export_one(request: web.Request) -> web.Response:
    job = request.app[SERVICE].exports.get(request.match_info["id"])
    return web.json_response(job.as_json())


@table.delete("/export/{id}")
async def export_cancel(request: web.Request) -> web.Response:
    exports = request.app[SERVICE].exports
    job_id = exports.get(request.match_info["id"]).id
    job = await blocking(exports.cancel, job_id)
    return web.json_response(job.as_json())
