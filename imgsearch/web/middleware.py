"""Every error, expected or not, leaves as {"error": message, "status": code} with that status."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from ..errors import Busy, ImgSearchError, disk_full
from .guard import masked

log = logging.getLogger(__name__)


def error_response(message: str, status: int, headers: Any = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Busy as exc:
        return error_response(exc.message, exc.status, {"Retry-After": str(exc.retry_after)})
    except ImgSearchError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.message, exc.status, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # A body that cannot be read as its headers say: not gzip under Content-Encoding: gzip,
        # a broken chunk. Said when the handler reads it, so it ends here, not in aiohttp.
        return error_response(f"request body cannot be read: {_reason(exc)}", 400)
    except Exception as exc:
        if (full := disk_full(exc)) is not None:  # not a bug: said once, plainly
            log.warning("%s %s: %s", request.method, masked(request.path_qs), full.message)
            return error_response(full.message, full.status)
        log.exception("internal error on %s %s", request.method, masked(request.path_qs))
        return error_response("internal server error (see the daemon's log)", 500)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) in our shape."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        return error_response(message, exc.status, {"Allow": exc.headers["Allow"]})
    if isinstance(exc, web.HTTPNotFound) and (exc.text or "").startswith("404:"):
        return error_response(f"no such endpoint: {request.path}", exc.status)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(f"request body too large ({exc.text})", exc.status)
    return error_response(exc.text or exc.reason, exc.status)


def _reason(exc: Exception) -> str:
    """An unreadable body's reason in aiohttp's words, without their "400, message:" frame."""
    cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
    if isinstance(cause, HttpProcessingError) and cause.message:
        return cause.message
    return str(exc).strip() or type(exc).__name__
