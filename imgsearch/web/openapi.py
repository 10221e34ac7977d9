"""The OpenAPI 3 document at /openapi.json and the docs page at /docs.

The document is hand-maintained package data (`openapi.json`); tests/test_openapi.py checks it
against the app's routes and validates real responses and a schemathesis run against it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from ..embedders import TextEmbedder
from .keys import SERVICE

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


def document(
    server_url: str | None = None,
    comparators: Sequence[str] | None = None,
    *,
    text_search: bool = True,
    dim: int | None = None,
) -> dict[str, Any]:
    """The OpenAPI document; with `server_url`, that is its only server; with `comparators`,
    `compare` accepts exactly those names (the registry is open, so the file cannot list them);
    without `text_search` (a model with no text tower), text queries are left out; with `dim`,
    a query vector must have exactly that many values."""
    doc: dict[str, Any] = json.loads(_read(DOCUMENT))
    if server_url is not None:
        doc["servers"] = [{"url": server_url, "description": "this daemon"}]
    if comparators is not None:
        schema = doc["components"]["schemas"]["CompareNames"]
        schema["pattern"] = compare_pattern(comparators)
        schema["description"] = f"Comparator names, comma-separated: {', '.join(comparators)}."
    if not text_search:
        variants = doc["components"]["schemas"]["SearchQuery"]["oneOf"]
        variants[:] = [v for v in variants if not v["$ref"].endswith("/TextQuery")]
    if dim is not None:
        vector = doc["components"]["schemas"]["ByVector"]["properties"]["vector"]
        vector["minItems"] = vector["maxItems"] = dim
    return doc


def compare_pattern(names: Sequence[str]) -> str:
    """A regex for what `compare` accepts: names (any case, spaces around them) separated by
    commas, empty parts allowed; with no names, only empty parts."""
    spelled = "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)
        for name in names
    )
    part = rf"\s*(?:(?:{spelled})\s*)?" if names else r"\s*"
    return f"^{part}(?:,{part})*$"


def _read(name: str) -> str:
    return resources.files(PACKAGE).joinpath(name).read_text(encoding="utf-8")


@table.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    doc = document(
        f"{request.scheme}://{request.host}",
        service.comparators.names(),
        text_search=isinstance(service.embedder, TextEmbedder),
        dim=service.embedder.dim,
    )
    return web.json_response(doc)


@table.get("/docs")
async def docs(request: web.Request) -> web.Response:
    headers = {
        "Content-Security-Policy": PAGE_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    return web.Response(text=_read(PAGE), content_type="text/html", headers=headers)
