"""Routes: /duplicates, clusters of identical files and verified near copies."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from ..duplicates import DEFAULT_THRESHOLD, check_threshold
from . import parsing
from .filters import allowed_for, parse_filters
from .keys import DUPLICATES_LOCK, SERVICE
from .metadata import members_with_metadata
from .offload import blocking
from .parsing import Params

table = web.RouteTableDef()

CLIENT_POLL_S = 0.5  # how often a run looks whether its client is still there


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
    stop = threading.Event()
    async with request.app[DUPLICATES_LOCK]:  # one run at a time; the others wait here
        run = asyncio.ensure_future(
            blocking(service.duplicates.find, threshold, folder, allowed, stop)
        )
        # aiohttp (run_app's default) does not cancel a handler whose client left: a run it
        # abandoned (a Ctrl-C, a page closed) went on for minutes at a million images, and
        # every later run waited for it. Where the handler is cancelled, the run stops too.
        try:
            while not (await asyncio.wait({run}, timeout=CLIENT_POLL_S))[0]:
                if request.transport is None or request.transport.is_closing():
                    stop.set()
        except asyncio.CancelledError:
            stop.set()
            raise
        report = run.result()
    body = await blocking(members_with_metadata, service.catalog.store, report.as_json())
    return web.json_response(body)
