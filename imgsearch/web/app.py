"""The aiohttp application factory; services live under typed AppKeys, opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config
from ..embedders import Embedder
from ..security import with_token
from ..service import Service
from . import adds, bulk, duplicates, library, metadata, openapi, search, ui, watches
from .bodies import BODY_GATE, body_gate
from .gate import Gate
from .guard import guard
from .keys import DUPLICATES_LOCK, FETCH, SEARCH_GATE, SERVICE
from .middleware import json_errors
from .offload import blocking

log = logging.getLogger(__name__)

UPLOAD_OVERHEAD = 64 * 1024
# The longest request line aiohttp reads (its default is 8 KiB, answered in text/plain before any
# middleware): room for a 2048-character URL and a long path, percent-encoded, in one query.
MAX_REQUEST_LINE = 128 * 1024
# Each module serves one resource from its `table`; a new resource is one more module here
# (and its paths in openapi.json, which tests/test_openapi.py holds to the routes).
ROUTE_MODULES = (library, search, adds, bulk, watches, duplicates, metadata, ui, openapi)


def create_app(
    config: Config,
    *,
    embedder: Embedder | None = None,
    service: Service | None = None,
    model_fallback: bool = False,
) -> web.Application:
    """Build the app; the service (model, database, index) opens when the app starts.
    `model_fallback`: the model was not chosen explicitly (see Service)."""
    config = with_token(config)
    # Room for the largest image sent base64-encoded in a JSON data URI, plus framing.
    max_body = config.max_upload_bytes * 4 // 3 + UPLOAD_OVERHEAD
    app = web.Application(
        middlewares=[json_errors, guard(config.allow_hosts, config.token)],
        client_max_size=max_body,
        handler_args={"max_line_size": MAX_REQUEST_LINE},
    )
    for module in ROUTE_MODULES:
        app.router.add_routes(module.table)
    app[SEARCH_GATE] = Gate("search", config.max_pending_searches, retry_after=1)
    app[BODY_GATE] = body_gate()
    app[DUPLICATES_LOCK] = asyncio.Lock()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        svc = (
            service
            if service is not None
            else await blocking(Service, config, embedder, model_fallback=model_fallback)
        )
        app[SERVICE] = svc
        log.info("ready: %d images, model %s", svc.catalog.store.count(), svc.embedder.model_id)
        yield
        if service is None:
            await blocking(svc.close)

    async def interrupt_jobs(app: web.Application) -> None:
        """Before waiting for handlers: running adds stop after their batch in flight."""
        if SERVICE in app:
            app[SERVICE].jobs.interrupt()
            app[SERVICE].duplicates.interrupt()  # a /duplicates run stops (503) in a block

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(_fetch_session)  # after lifecycle: it needs the service
    app.on_shutdown.append(interrupt_jobs)
    return app


async def _fetch_session(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the app's download session, shared by every search by URL."""
    async with app[SERVICE].downloader.session() as session:
        app[FETCH] = session
        yield
