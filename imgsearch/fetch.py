"""Downloading images by URL, with limits: size, time, redirects, content type, decoding.

This module is an HTTP *client* (aiohttp's), which is why it imports aiohttp although it sits
below the web layer: it is what `/add?url=` and `/search?url=` download with. A `Downloader`
holds the limits and is shared; a `FetchSession` is one connection pool on one event loop
(the app's, or an add job's), and caps how many downloads run at once through it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from PIL import Image
from yarl import URL

from . import __version__
from .errors import (
    BadRequest,
    ImgSearchError,
    NotAnImage,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from .files import write_atomic
from .images import decode

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
CHECK_SIDE = 32  # decoding to check a download needs no more pixels than this
OCTET_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
GONE = frozenset({404, 410})
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif", "HEIF": ".heic"}


@dataclass(frozen=True)
class Fetched:
    """A downloaded body that passed the size and content-type checks (not decoded yet)."""

    url: str
    data: bytes
    content_type: str


def check_url(raw: Any, name: str = "url") -> str:
    """A caller's URL, stripped, if it is an absolute http(s) URL of sane length; else 400."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest(f"{name} must be a non-empty http:// or https:// URL")
    text = raw.strip()
    if len(text) > MAX_URL_LENGTH:
        raise BadRequest(f"{name} is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadRequest(f"{name} contains control characters: {text[:200]!r}")
    try:
        url = URL(text)
        host = url.host
    except (ValueError, TypeError):  # UnicodeError is a ValueError
        raise BadRequest(f"{name} is not a valid URL: {text[:200]!r}") from None
    if url.scheme not in {"http", "https"}:
        raise BadRequest(f"{name} must be an http:// or https:// URL, got {text[:200]!r}")
    if not host:
        raise BadRequest(f"{name} has no host name: {text[:200]!r}")
    return text


class Downloader:
    """The download limits, and saving a downloaded image under a content-addressed name."""

    def __init__(self, *, timeout: float, concurrency: int, max_bytes: int, max_pixels: int):
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._saved: set[str] | None = None  # names saved while noted (note_saves)

    def session(self) -> FetchSession:
        """A connection pool for the running event loop; use it as `async with`."""
        return FetchSession(self)

    def save(self, data: bytes, folder: Path) -> Path:
        """Check that `data` decodes, and store it as FOLDER/<sha256>.<format's extension>.

        An existing file of that name is left as it is (same name, same bytes), so adding an
        image again finds it unchanged. Blocking: run it off the event loop.
        """
        decode(data, min_side=CHECK_SIDE, max_pixels=self.max_pixels)
        try:
            fmt = Image.open(io.BytesIO(data)).format or ""
        except Exception as exc:  # decode() just read it; this is only for the extension
            raise NotAnImage(f"cannot identify the image format: {exc}") from None
        ext = EXTENSIONS.get(fmt, "." + fmt.lower() if fmt.isalnum() else ".img")
        path = folder / f"{hashlib.sha256(data).hexdigest()}{ext}"
        if self._saved is not None:  # (before it can be indexed: the sweep leaves it)
            self._saved.add(path.name)
        if not path.exists():
            write_atomic(path, data)
        return path

    def note_saves(self) -> Callable[[str], bool]:
        """From now until `stop_noting`, remember the names of the files saved (or found
        saved already): the start's sweep of the downloads folder asks whether a name was,
        and leaves it (a file's own times cannot say: a new ctime would make every cache of
        the image stale)."""
        saved: set[str] = set()
        self._saved = saved
        return saved.__contains__

    def stop_noting(self) -> None:
        self._saved = None


class FetchSession:
    """An aiohttp client session with the downloader's limits, on one event loop."""

    def __init__(self, downloader: Downloader) -> None:
        self.downloader = downloader
        self._limit = asyncio.Semaphore(downloader.concurrency)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=downloader.concurrency),
            timeout=aiohttp.ClientTimeout(total=downloader.timeout),
            headers={"User-Agent": f"imgsearch/{__version__}", "Accept": "image/*"},
        )

    async def __aenter__(self) -> FetchSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def fetch(self, url: str) -> Fetched:
        """Download `url` (checked with check_url); raise an ImgSearchError saying what failed."""
        timeout = self.downloader.timeout
        try:
            async with (
                self._limit,
                # aiohttp refuses the redirect that brings its count to max_redirects
                self._session.get(url, max_redirects=MAX_REDIRECTS + 1) as resp,
            ):
                return await self._read(url, resp)
        except ImgSearchError:
            raise
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"no complete answer within {timeout:g} s") from None
        except aiohttp.TooManyRedirects:
            raise UpstreamError(f"more than {MAX_REDIRECTS} redirects") from None
        except (aiohttp.NonHttpUrlRedirectClientError, aiohttp.InvalidUrlRedirectClientError):
            raise UpstreamError("redirected to something that is not an http(s) URL") from None
        except aiohttp.InvalidURL as exc:  # check_url passed it, aiohttp cannot send it
            raise BadRequest(f"cannot request this URL: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            raise UpstreamError(f"cannot connect to {exc.host}: {reason}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"download failed: {exc or type(exc).__name__}") from None
        except ValueError as exc:  # e.g. a host name IDNA cannot encode
            raise BadRequest(f"cannot request this URL: {exc}") from None

    async def _read(self, url: str, resp: aiohttp.ClientResponse) -> Fetched:
        """The body, if the answer is a success with an image type and not too large."""
        if resp.status in GONE:
            raise NotFound(f"the server answered {resp.status} {resp.reason or ''}".rstrip())
        if not 200 <= resp.status < 300:
            raise UpstreamError(f"the server answered {resp.status} {resp.reason or ''}".rstrip())
        ctype = resp.content_type.lower()
        if not ctype.startswith("image/") and ctype not in OCTET_TYPES:
            raise NotAnImage(f"the server sent {ctype}, not an image")
        limit = self.downloader.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise PayloadTooLarge(f"{resp.content_length} bytes, over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"over the {limit}-byte limit")
            chunks.append(chunk)
        log.debug("downloaded %s: %d bytes of %s", url, size, ctype)
        return Fetched(url, b"".join(chunks), ctype)
