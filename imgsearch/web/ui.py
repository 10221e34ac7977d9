"""The web page at / and the thumbnails it shows."""

from __future__ import annotations

import html
import re
import urllib.parse
from pathlib import Path

from aiohttp import web

from ..errors import NotFound
from ..service import Service
from .keys import SERVICE
from .offload import blocking
from .parsing import Params

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page and its assets carry no version in their names: always revalidate (ETag/mtime).
NO_CACHE = "no-cache"
PAGE_HEADERS = {
    "Cache-Control": NO_CACHE,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}
THUMBNAIL_MAX_AGE = 60  # short: the URL names a path, whose file may change
_ASSET_URL = re.compile(r'(src|href)="(/static/[A-Za-z0-9_.-]+)"')

table = web.RouteTableDef()


@table.get("/")
async def index(request: web.Request) -> web.Response:
    """The page. With `?token=`, its own asset URLs carry the token too (a browser sends no
    Authorization header when it loads scripts and stylesheets)."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    token = request.query.get("token")
    if token:
        query = html.escape(urllib.parse.urlencode({"token": token}))
        page = _ASSET_URL.sub(lambda m: f'{m[1]}="{m[2]}?{query}"', page)
    return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)


@table.get("/static/{name}")
async def static(request: web.Request) -> web.FileResponse:
    """The page's own files, from the package; nothing outside the static folder."""
    name = request.match_info["name"]
    files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and not p.name.startswith(".")}
    path = files.get(name)
    kind = CONTENT_TYPES.get(path.suffix) if path is not None else None
    if path is None or kind is None:
        raise NotFound(f"no such file: /static/{name}")
    return web.FileResponse(path, headers={**PAGE_HEADERS, "Content-Type": kind})


@table.get("/thumbnail")
async def thumbnail(request: web.Request) -> web.Response:
    """A JPEG thumbnail of an indexed image (anything not indexed is 404)."""
    service = request.app[SERVICE]
    path = service.paths.resolve(Params(request.query).get("image"))
    jpeg = await blocking(_thumbnail, service, path)
    headers = {"Cache-Control": f"private, max-age={THUMBNAIL_MAX_AGE}"}
    return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


def _thumbnail(service: Service, path: Path) -> bytes:
    state = service.catalog.store.file_states([str(path)]).get(str(path))
    if state is None:
        raise NotFound(f"not an indexed image: {path}")
    return service.thumbnails.get(state.id, path)
