"""Routes: /duplicates, clusters of identical files and verified near copies."""

from __future__ import annotations

from aiohttp import web

from ..duplicates import DEFAULT_THRESHOLD, check_threshold
from . import parsing
from .keys import DUPLICATES_LOCK, SERVICE
from .offload import blocking

table = web.RouteTableDef()


@table.get("/duplicates")
async def duplicates(request: web.Request) -> web.Response:
    """Clusters of duplicates: byte-identical files first, then verified near copies."""
    service = request.app[SERVICE]
    raw_threshold = request.query.get("threshold")
    threshold = check_threshold(parsing.number(raw_threshold, "threshold", DEFAULT_THRESHOLD))
    raw = request.query.get("folder")
    folder = None if raw is None else str(service.paths.resolve(raw, name="folder"))
    async with request.app[DUPLICATES_LOCK]:  # one run at a time; the others wait here
        report = await blocking(service.duplicates.find, threshold, folder)
    return web.json_response(report.as_json())
