"""Keep web pages out: DNS-rebinding Host check, cross-site refusal, and the bearer token.

A daemon on localhost is reachable from any page the user's browser opens. A page cannot
set the Host header (rebinding leaves the attacker's name in it) nor hide its Origin or
Sec-Fetch-Site, while plain local programs (curl, requests) send neither of the latter.
A browser that sends no Sec-Fetch-Site (one from before Chrome 76, Firefox 90, Safari 16.4;
current ones to a plain-HTTP name allowed with --allow-host) sends no Origin on a GET either
(an `<img src=".../add?image=/">` on any site): a request that names itself a
browser (every one's User-Agent starts "Mozilla/") and says nothing of where it comes from
must carry a Referer from the daemon's own pages (theirs send it: `Referrer-Policy:
same-origin`), except for the pages a user opens by typing their address.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..config import LOOPBACK_HOSTS
from ..errors import Forbidden, Unauthorized

OPEN_PATHS = frozenset({"/health"})
CROSS_SITE = frozenset({"cross-site", "same-site"})
# What an old browser (no Sec-Fetch-Site) may ask without a Referer from the daemon's pages:
# the pages themselves, opened by typing or from a bookmark (they change nothing).
TOP_LEVEL_PAGES = frozenset({"/", "/docs", "/health"})
BROWSER_AGENT = "Mozilla/"


# A token in a query string (`?token=...`, for links and the page's images), as logs show it.
TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)


def host_name(host: str) -> str:
    """The name part of a Host header: 'localhost:8080' -> 'localhost', '[::1]:80' -> '::1';
    '' (no allowed name) for what is not `name`, `name:port`, `[addr]` or `[addr]:port` with
    a numeric port: '[::1]evil.com' and '127.0.0.1:x@evil.com' name no loopback host."""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        return name if bracket and (not rest or _port(rest)) else ""
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name if _digits(port) else ""
    return host  # a bare name, or a bare IPv6 address (no port without brackets)


def _port(rest: str) -> bool:
    return rest.startswith(":") and _digits(rest[1:])


def _digits(port: str) -> bool:
    """A Host header's port: ASCII digits, or none at all (RFC 3986 allows `host:`)."""
    return port.isascii() and (port.isdigit() or not port)


def masked(text: str) -> str:
    """A path and query as logs may show it: the token's value hidden."""
    return TOKEN_IN_QUERY.sub(r"\1***", text)


class TokenMask(logging.Filter):
    """Hides `?token=` values in an access log's lines (aiohttp formats the whole request
    line, query and all, into the message before it is logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = masked(record.getMessage())
        record.args = None
        return True


def guard(allow_hosts: Iterable[str], token: str | None) -> Middleware:
    """The middleware that checks Host, Origin, Sec-Fetch-Site and the token on every route."""
    allowed = LOOPBACK_HOSTS | {h.lower() for h in allow_hosts}

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if host_name(host).lower() not in allowed:
            raise Forbidden(
                f"Host {host!r} is not allowed (DNS rebinding guard); "
                "start the daemon with --allow-host NAME to allow a name"
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{host}":
            raise Forbidden(f"cross-origin requests are refused (Origin {origin})")
        if request.headers.get("Sec-Fetch-Site", "").lower() in CROSS_SITE:
            raise Forbidden("cross-site requests are refused")
        if _unplaced_browser(request, f"{request.scheme}://{host}"):
            raise Forbidden(
                "this browser does not say where the request comes from (no Sec-Fetch-Site, "
                "Origin or Referer of this daemon's pages): open the page at / and search "
                "from there, or use a current browser"
            )
        if token is not None and request.path not in OPEN_PATHS:
            given = _bearer(request) or request.query.get("token", "")
            # surrogatepass: a header's bytes that are not UTF-8 arrive as lone surrogates
            # (surrogateescape), a wrong token like any other.
            if not hmac.compare_digest(_bytes(given), _bytes(token)):
                raise Unauthorized("a valid token is required: Authorization: Bearer TOKEN")
        return await handler(request)

    return check


def _unplaced_browser(request: web.Request, own: str) -> bool:
    """A browser that sends no Sec-Fetch-Site, asking for more than a top-level page without
    an Origin or Referer of `own` (the daemon's own origin)."""
    headers = request.headers
    if "Sec-Fetch-Site" in headers or not headers.get("User-Agent", "").startswith(BROWSER_AGENT):
        return False
    if request.path in TOP_LEVEL_PAGES or headers.get("Origin") == own:
        return False
    referer = headers.get("Referer", "")
    return not (referer == own or referer.startswith(own + "/"))


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
