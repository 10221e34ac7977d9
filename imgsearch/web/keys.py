"""Typed keys for what the app holds."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..fetch import FetchSession
from ..service import Service
from .gate import Gate

SERVICE = web.AppKey("service", Service)
SEARCH_GATE = web.AppKey("search_gate", Gate)
# One /duplicates run at a time; others wait here (not in a thread) and then read its answer.
DUPLICATES_LOCK = web.AppKey("duplicates_lock", asyncio.Lock)
FETCH = web.AppKey("fetch", FetchSession)
