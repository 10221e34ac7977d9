"""The OpenAPI 3 document at /openapi.json and the docs page at /docs.

The document is hand-maintained package data (`openapi.json`); tests/test_openapi.py checks it
against the app's routes and validates real responses and a schemathesis run against it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from aiohttp import web

PACKAGE = __name__.rpartition(".")[0]
DOCUMENT = "openapi.json"
PAGE = "docs.html"
# The page's own inline script and style, and fetches to this daemon only; nothing else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

table = web.RouteTableDef()


def document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document; with `server_url`, that is its only server."""
    doc: dict[str, Any] = json.loads(_read(DOCUMENT))
    if server_url is not None:
        doc["servers"] = [{"url": server_url, "description": "this daemon"}]
    return doc


def _read(name: str) -> str:
    return resources.files(PACKAGE).joinpath(name).read_text(encoding="utf-8")


@table.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(f"{request.scheme}://{request.host}"))


@table.get("/docs")
async def docs(request: web.Request) -> web.Response:
    headers = {
        "Content-Security-Policy": PAGE_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return web.Response(text=_read(PAGE), content_type="text/html", headers=headers)
