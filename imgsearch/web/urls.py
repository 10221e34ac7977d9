"""URLs in requests: `url`/`urls` of an add, CSV uploads of URLs, and search queries by URL."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import BadRequest, ImgSearchError, PayloadTooLarge
from ..fetch import check_url
from .keys import FETCH, SERVICE

MAX_URLS = 10_000  # per add
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
CSV_TYPES = frozenset({"text/csv", "application/csv"})


async def fetch_session(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the app's download session, shared by every search by URL."""
    async with app[SERVICE].downloader.session() as session:
        app[FETCH] = session
        yield


async def query_bytes(request: web.Request, raw: Any) -> bytes:
    """Download a search query (never stored); errors name the URL."""
    url = check_url(raw)
    try:
        return (await request.app[FETCH].fetch(url)).data
    except ImgSearchError as exc:
        raise ImgSearchError(f"{url}: {exc.message}", exc.status) from None


def url_list(body: Mapping[str, Any]) -> tuple[list[str] | None, bool]:
    """The URLs an add names (`url`: one, or `urls`: a list), and whether it named exactly one
    through `url` (then it fails as one file would); None when it names none."""
    single, many = body.get("url"), body.get("urls")
    if single is None and many is None:
        return None, False
    if single is not None and many is not None:
        raise BadRequest("give url or urls, not both")
    if single is not None:
        if not isinstance(single, str):
            raise BadRequest("url must be a string")
        return [single], True
    if not isinstance(many, list) or not all(isinstance(u, str) for u in many):
        raise BadRequest("urls must be a list of URL strings")
    return checked_count(many), False


def checked_count(urls: list[str]) -> list[str]:
    if not urls:
        raise BadRequest("no URLs given")
    if len(urls) > MAX_URLS:
        raise BadRequest(f"{len(urls)} URLs in one add; at most {MAX_URLS}")
    return urls


def is_csv(request: web.Request) -> bool:
    """Whether a POST /add carries a CSV (raw, or a multipart upload) rather than JSON."""
    return request.content_type in CSV_TYPES or request.content_type.startswith("multipart/")


async def posted_csv(request: web.Request, max_bytes: int) -> tuple[list[str], dict[str, str]]:
    """The URLs of an uploaded CSV (its `url` column), and the form's other fields."""
    fields: dict[str, str] = {}
    if request.content_type in CSV_TYPES:
        data = await _read_capped(request.content.iter_chunked(65536), max_bytes)
    else:
        try:
            part = await _multipart(request, max_bytes, fields)
        except (HttpProcessingError, ValueError, KeyError) as exc:  # framing, headers, boundary
            raise BadRequest(f"malformed multipart body: {exc!r}") from None
        if part is None:
            raise BadRequest("multipart upload needs a file field named 'csv'")
        data = part
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("the CSV is not UTF-8 text") from None
    return checked_count(parse_csv(text)), fields


def parse_csv(text: str) -> list[str]:
    """The non-blank cells of the column headed `url` (any case), in order."""
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows, None)
        names = [name.strip().lower() for name in header or []]
        if "url" not in names:
            found = ", ".join(repr(n) for n in names[:10]) or "nothing"
            raise BadRequest(f"the CSV needs a header row with a 'url' column; found {found}")
        column = names.index("url")
        urls = []
        for row in rows:
            cell = row[column].strip() if column < len(row) else ""
            if cell:
                urls.append(cell)
    except csv.Error as exc:
        raise BadRequest(f"malformed CSV at line {rows.line_num}: {exc}") from None
    return urls


async def _multipart(request: web.Request, max_bytes: int, fields: dict[str, str]) -> bytes | None:
    """The `csv` part's bytes; other parts (update, wait) go to `fields`."""
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if part.name == "csv":
            data = await _read_capped(_chunks(part), max_bytes)
        elif part.name:
            if len(fields) >= MAX_FIELDS:
                raise BadRequest(f"more than {MAX_FIELDS} form fields")
            raw = await _read_capped(_chunks(part), MAX_FIELD_BYTES)
            fields[part.name] = raw.decode(errors="replace")
    return data


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk():
        yield chunk


async def _read_capped(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    out: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
        out.append(chunk)
    return b"".join(out)
