"""The aiohttp application factory; services live under typed AppKeys, opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from ..config import Config
from ..embedders import Embedder
from ..security import with_token
from ..service import Service
from . import library, metadata, openapi, routes, ui, urls
from .gate import Gate
from .guard import guard
from .keys import DUPLICATES_LOCK, SEARCH_GATE, SERVICE
from .middleware import json_errors

log = logging.getLogger(__name__)

UPLOAD_OVERHEAD = 64 * 1024


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
    )
    for table in (routes.table, library.table, metadata.table, ui.table, openapi.table):
        app.router.add_routes(table)
    app[SEARCH_GATE] = Gate("search", config.max_pending_searches, retry_after=1)
    app[DUPLICATES_LOCK] = asyncio.Lock()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        svc = (
            service
            if service is not None
            else await loop.run_in_executor(
                None, partial(Service, config, embedder, model_fallback=model_fallback)
            )
        )
        app[SERVICE] = svc
        saver = asyncio.create_task(_save_periodically(svc, config.index_save_interval))
        log.info("ready: %d images, model %s", svc.catalog.store.count(), svc.embedder.model_id)
        yield
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        if service is None:
            await loop.run_in_executor(None, svc.close)

    async def interrupt_jobs(app: web.Application) -> None:
        """Before waiting for handlers: running adds stop after their batch in flight."""
        if SERVICE in app:
            app[SERVICE].jobs.interrupt()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(urls.fetch_session)  # after lifecycle: it needs the service
    app.on_shutdown.append(interrupt_jobs)
    return app


async def _save_periodically(service: Service, interval: float) -> None:
    """Save the index in the background when it has changed, so a crash has little to catch up."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            await loop.run_in_executor(None, service.catalog.save)
        except Exception:
            log.exception("saving the index failed; will retry")
