"""The OpenAPI 3 document at /openapi.json and the docs page at /docs."""

from __future__ import annotations

from aiohttp import web

table = web.RouteTableDef()
