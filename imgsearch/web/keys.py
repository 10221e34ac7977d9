"""Typed keys for what the app holds."""

from __future__ import annotations

from aiohttp import web

from ..fetch import FetchSession
from ..service import Service
from .gate import Gate

SERVICE = web.AppKey("service", Service)
SEARCH_GATE = web.AppKey("search_gate", Gate)
FETCH = web.AppKey("fetch", FetchSession)
