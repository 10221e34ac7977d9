"""Routes for living with a photo library: watched folders and duplicates."""

from __future__ import annotations

from aiohttp import web

table = web.RouteTableDef()
