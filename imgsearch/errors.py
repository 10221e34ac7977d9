"""The one error type the service raises; the web layer turns it into a JSON response. Also
`disk_full`: which of any other errors say the data directory's disk is full (507, not 500)."""

from __future__ import annotations

import errno
import sqlite3


class ImgSearchError(Exception):
    """An error meant for the caller, with the HTTP status that describes it."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ImgSearchError):
    """A missing or invalid parameter."""

    status = 400


class Unauthorized(ImgSearchError):
    """A token is required and was missing or wrong."""

    status = 401


class Forbidden(ImgSearchError):
    """Refused whatever the request: another site, an unknown Host, a path outside the roots."""

    status = 403


class NotFound(ImgSearchError):
    """A path or resource that does not exist."""

    status = 404


class Conflict(ImgSearchError):
    """The request clashes with what is there (an export into a folder that holds files)."""

    status = 409


class NotAnImage(ImgSearchError):
    """A file or upload that cannot be decoded as an image."""

    status = 422


class PayloadTooLarge(ImgSearchError):
    """An upload or file over the configured size limit."""

    status = 413


class UpstreamError(ImgSearchError):
    """A URL whose server failed, refused the request, or could not be reached."""

    status = 502


class UpstreamTimeout(ImgSearchError):
    """A URL whose server did not answer in time."""

    status = 504


class Busy(ImgSearchError):
    """Too much work queued already; the caller should retry after `retry_after` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(ImgSearchError):
    """A start-up problem: bad flags, a model that cannot load, a data dir made by another model."""

    status = 500


class DiskFull(ImgSearchError):
    """The data directory's file system has no room (or the user's quota is spent): what
    was committed before stays, and the same request works once space is freed."""

    status = 507


# SQLite's own words for SQLITE_FULL, where an error does not carry its code.
SQLITE_FULL_TEXT = "database or disk is full"
FREE_SPACE = "nothing stored before was lost; free some space and try again"
CHAIN_DEPTH = 8  # how far back disk_full looks through the errors an error was raised from


def disk_full(exc: BaseException) -> DiskFull | None:
    """`exc` (or an error it was raised from) as a DiskFull where it says the disk or the
    quota is full: an OSError ENOSPC / EDQUOT, SQLite's SQLITE_FULL; else None."""
    seen: BaseException | None = exc
    for _ in range(CHAIN_DEPTH):
        if seen is None:
            break
        if isinstance(seen, DiskFull):
            return seen
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"the data directory's disk is full ({seen.strerror}): {FREE_SPACE}")
        if isinstance(seen, sqlite3.Error) and (
            getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or SQLITE_FULL_TEXT in str(seen)
        ):
            return DiskFull(f"the data directory's disk is full (SQLite: {seen}): {FREE_SPACE}")
        seen = seen.__cause__ or seen.__context__
    return None
