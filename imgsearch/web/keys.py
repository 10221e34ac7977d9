"""Typed keys for what the app holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..service import Service
from .gate import Gate

SERVICE = web.AppKey("service", Service)
INGEST_POOL = web.AppKey("ingest_pool", ThreadPoolExecutor)
SEARCH_GATE = web.AppKey("search_gate", Gate)
ADD_GATE = web.AppKey("add_gate", Gate)
