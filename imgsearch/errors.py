"""The one error type the service raises; the web layer turns it into a JSON response."""

from __future__ import annotations


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
