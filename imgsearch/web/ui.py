"""The web page at / and the thumbnails it shows."""

from __future__ import annotations

from aiohttp import web

table = web.RouteTableDef()
