"""Routes: /duplicates, clusters of identical files and verified near copies."""

from __future__ import annotations

from aiohttp import web

from ..duplicates import DEFAULT_THRESHOLD, check_threshold
from . import parsing
from .filters import allowed_for, parse_filters
from .keys import DUPLICATES_LOCK, SERVICE
from .metadata import members_with_metadata
from .offload import blocking
from .parsing import Params

table = web.RouteTableDef()


@table.get("/duplicates")
async def duplicates(request: web.Request) -> web.Response:
    """Clusters of duplicates: byte-identical files first, then verified near copies."""
    service = request.app[SERVICE]
    params = Params(request.query)
    raw_threshold = params.get("threshold")
    threshold = check_threshold(parsing.number(raw_threshold, "threshold", DEFAULT_THRESHOLD))
    filters = parse_filters(service, params)
    # One folder alone is the finder's own narrowing; more, or `where`, go by allowed ids.
    folder = filters.folders[0] if len(filters.folders) == 1 and not filters.where else None
    allowed = None if folder is not None else await allowed_for(service, filters)
    async with request.app[DUPLICATES_LOCK]:  # one run at a time; the others wait here
        report = await blocking(service.duplicates.find, threshold, folder, allowed)
    body = await blocking(members_with_metadata, service.catalog.store, report.as_json())
    return web.json_response(body)
