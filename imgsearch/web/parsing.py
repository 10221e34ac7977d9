"""Request parsing, all of it: query strings, JSON, forms, multipart, raw bodies, data URIs
(a CSV add's rows, which name files or URLs and their metadata, are read in addcsv.py).

Every parameter has one source. A POST may carry an option in its body (a JSON key, a form or
multipart field) as well as in the query string; when both give it with different values the
request is refused (400), never silently resolved; so is a single-valued one repeated with
different values in one source (`/remove?image=A&image=B`). Handlers read parameters through
`Params`.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict, MultiMapping

from ..errors import BadRequest, PayloadTooLarge
from .bodies import reading

MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
MAX_URLS = 10_000  # per add (and rows of paths per CSV add)
MAX_FIELDS = 32  # form fields besides the file, per multipart body
MAX_FIELD_BYTES = 64 * 1024
CSV_TYPES = frozenset({"text/csv", "application/csv"})
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
CHUNK = 65536
MAX_SHOWN = 3  # values of a repeated parameter named in its 400
# No request needs more than three levels (path_map's pairs); deeper ones would only reach
# repr() and json.dumps, which recurse and fail near Python's 1,000 frames (orjson reads 1,024).
MAX_DEPTH = 32


# -- one value -------------------------------------------------------------------------------


def limit(raw: Any, name: str = "limit") -> int:
    """A count from 1 to MAX_LIMIT; DEFAULT_LIMIT when absent."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        if isinstance(raw, bool | float):
            raise ValueError(raw)
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"{name} must be between 1 and {MAX_LIMIT}, got {value}")
    return value


def optional_limit(raw: Any, name: str) -> int | None:
    return None if raw is None or raw == "" else limit(raw, name)


def flag(raw: Any, name: str, default: bool = False) -> bool:
    """A 0/1 switch: booleans, 0/1, true/false, yes/no, on/off."""
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadRequest(f"{name} must be 0 or 1, got {raw!r}")


def number(raw: Any, name: str, default: float) -> float:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        if isinstance(raw, bool):
            raise ValueError(raw)
        return float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number, got {raw!r}") from None


def text(raw: Any, name: str = "text") -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest(f"{name} must be a non-empty string")
    return raw.strip()


def names(raw: Any, name: str = "compare") -> list[str]:
    """A list of names from one name, a list, or repeated fields."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return raw
    raise BadRequest(f"{name} must be a name or a list of names")


def data_uri(uri: str, max_bytes: int) -> bytes:
    """Bytes of a `data:image/...;base64,...` URI."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise BadRequest("image must be an absolute path or a data:image/...;base64,... URI")
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"image is over the {max_bytes}-byte upload limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image data URI is not valid base64") from None


def url_list(params: Params) -> tuple[list[str] | None, bool]:
    """The URLs an add names (`url`: one or repeated, or `urls`: a list), and whether it named
    exactly one (then it fails as one file would); None when it names none."""
    single, many = params.getall("url"), params.get("urls")
    if not single and many is None:
        return None, False
    if single and many is not None:
        raise BadRequest("give url or urls, not both")
    if single:
        if not all(isinstance(u, str) for u in single):
            raise BadRequest("url must be a string")
        return checked_count(single), len(single) == 1
    if not isinstance(many, list) or not all(isinstance(u, str) for u in many):
        raise BadRequest("urls must be a list of URL strings")
    return checked_count(many), False


def checked_count(items: list[str], what: str = "URLs") -> list[str]:
    """The URLs (or a CSV's paths: `what`) of one add, if there are some and not too many."""
    if not items:
        raise BadRequest(f"no {what} given")
    if len(items) > MAX_URLS:
        raise BadRequest(f"{len(items)} {what} in one add; at most {MAX_URLS}")
    return items


# -- parameters from two sources -------------------------------------------------------------


def _canonical(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return "1"
    return "0" if word in FALSE_WORDS - {""} else str(value).strip()


class Params:
    """A request's parameters: the query string plus at most one body (`source` names it)."""

    def __init__(
        self,
        query: MultiMapping[str],
        body: Mapping[str, Any] | MultiMapping[str] | None = None,
        source: str = "body",
    ) -> None:
        self.query = query
        self.body: MultiMapping[Any] = (
            body if isinstance(body, MultiMapping) else MultiDict(body or {})
        )
        self.source = source

    def __contains__(self, name: str) -> bool:
        return name in self.query or name in self.body

    def get(self, name: str, default: Any = None) -> Any:
        """The parameter's one value; 400 when query and body give different ones, or when one
        source gives it several times with different values (`/remove?image=A&image=B` must
        not quietly remove A)."""
        values = self.getall(name)
        if len(values) > 1 and len({_canonical(v) for v in values}) > 1:
            where = self.source if name in self.body else "query string"
            raise BadRequest(
                f"{name} is given {len(values)} times in the {where} with different values"
                f" ({', '.join(repr(v) for v in values[:MAX_SHOWN])}); give it once"
            )
        return values[0] if values else default

    def getall(self, name: str) -> list[Any]:
        """Every value of a repeatable parameter, all from one source."""
        asked, given = self.query.getall(name, []), self.body.getall(name, [])
        if asked and given:
            if [_canonical(v) for v in asked] != [_canonical(v) for v in given]:
                shown = asked[0] if len(asked) == 1 else asked
                raise BadRequest(
                    f"{name} is given in the query string ({shown!r}) and in the {self.source}"
                    f" ({given[0] if len(given) == 1 else given!r}) with different values;"
                    " give it once"
                )
            return list(given)
        return list(asked or given)

    def one_of(self, *alternatives: str) -> str | None:
        """Which of mutually exclusive parameters is given (None: none); 400 if several are."""
        given = [name for name in alternatives if name in self]
        if len(given) > 1:
            if len(given) == 2:
                raise BadRequest(f"give either {given[0]} or {given[1]}, not both")
            raise BadRequest(f"give only one of {', '.join(given)}")
        return given[0] if given else None


# -- bodies ----------------------------------------------------------------------------------

# An integer of this many digits may lie beyond 64 bits (-2**63 has 19): parsing.loads.
LONG_DIGITS = "0" * 19
DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")


def loads(text: str) -> Any:
    """JSON text as Python values, by orjson (a search's 512 numbers in ~30 µs against the
    standard module's ~200: bench/json_body.py), or by the standard module where orjson would
    read it otherwise: it refuses NaN, Infinity and lone surrogates, which json accepts, and
    reads integers beyond 64 bits as floats. Both read every body alike, and a bad one gets
    json's message. Beyond json: 400 for a value nested deeper than MAX_DEPTH, a string with
    a lone surrogate (not text: no file name, no SQLite value) or an integer longer than
    sys.get_int_max_str_digits()."""
    if not long_integer(text):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            if _opens_more_than(text, MAX_DEPTH):  # else it cannot be nested that deep
                _check_value(value, strings=False)
            return value
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        digits = sys.get_int_max_str_digits()
        raise BadRequest(f"request body has an integer of more than {digits} digits") from None
    _check_value(value, strings=True)
    return value


def _opens_more_than(text: str, limit: int) -> bool:
    """Whether `text` holds more than `limit` of '[' and '{'. By str.find, which skips ahead
    like memchr: str.count steps through a search's 10 kB in 3 µs a character, this in 0.5."""
    seen = 0
    for opening in "[{":
        at = text.find(opening)
        while at >= 0:
            seen += 1
            if seen > limit:
                return True
            at = text.find(opening, at + 1)
    return False


def _check_value(value: Any, strings: bool) -> None:
    """400 for a value nested more than MAX_DEPTH deep, or (`strings`) holding a lone UTF-16
    surrogate; iterative, as the check must not recurse either."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise BadRequest(f"request body is nested more than {MAX_DEPTH} levels deep")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif strings and isinstance(item, str) and not item.isascii():
            try:
                item.encode()
            except UnicodeEncodeError:
                raise BadRequest(
                    f"request body holds a lone UTF-16 surrogate in {ascii(item[:80])}: strings"
                    " must be Unicode text"
                ) from None


def long_integer(text: str) -> bool:
    """Whether `text` may hold an integer of LONG_DIGITS digits or more: a run of that many
    digits not after a decimal point (a fraction's digits are: a float's text has up to 17
    significant ones, after zeros). Where it says yes wrongly, json reads the text: slower,
    the same values."""
    digits = text.translate(DIGITS_AS_ZERO)
    at = digits.find(LONG_DIGITS)
    while at >= 0:
        if at == 0 or digits[at - 1] != ".":
            return True
        at = digits.find(LONG_DIGITS, at + len(LONG_DIGITS))
    return False


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or 400."""
    try:
        async with reading(request):
            body = await request.json(loads=loads)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except LookupError:
        raise _unknown_charset(request) from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def form(request: web.Request) -> MultiDict[str]:
    """An application/x-www-form-urlencoded body's fields (text only)."""
    try:
        async with reading(request):
            posted = await request.post()
    except UnicodeDecodeError:  # aiohttp decodes the body by its charset (none: UTF-8)
        name = (request.charset or "utf-8").upper()
        raise BadRequest(f"form body is not {name} text") from None
    except LookupError:
        raise _unknown_charset(request) from None
    return MultiDict((k, v) for k, v in posted.items() if isinstance(v, str))


def _unknown_charset(request: web.Request) -> BadRequest:
    return BadRequest(f"unknown charset {request.charset!r} in the Content-Type header")


async def multipart(
    request: web.Request, file_field: str, max_bytes: int, fields: Iterable[str] = ()
) -> tuple[bytes | None, MultiDict[str]]:
    """A multipart/form-data body: the file field's bytes (None if absent) and its other
    `fields` (at most MAX_FIELDS, each at most MAX_FIELD_BYTES); any other field is a 400."""
    try:
        async with reading(request):
            return await _multipart(request, file_field, max_bytes, frozenset(fields))
    except (HttpProcessingError, ValueError, KeyError) as exc:  # framing, headers, boundary
        raise BadRequest(f"malformed multipart body: {exc!r}") from None


async def _multipart(
    request: web.Request, file_field: str, max_bytes: int, known: frozenset[str]
) -> tuple[bytes | None, MultiDict[str]]:
    data: bytes | None = None
    fields: MultiDict[str] = MultiDict()
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if part.name == file_field:
            if data is not None:
                raise BadRequest(f"more than one '{file_field}' part")
            data = await read_capped(_chunks(part), max_bytes)
        elif part.name not in known:
            others = f" and {', '.join(sorted(known))}" if known else ""
            raise BadRequest(
                f"unknown form field {part.name!r}; this upload takes a file field named"
                f" '{file_field}'{others}"
            )
        else:
            if len(fields) >= MAX_FIELDS:
                raise BadRequest(f"more than {MAX_FIELDS} form fields")
            raw = await read_capped(_chunks(part), MAX_FIELD_BYTES, what="form field")
            fields.add(part.name, raw.decode(errors="replace"))
    return data, fields


async def raw(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, at most `max_bytes`."""
    async with reading(request):
        return await read_capped(request.content.iter_chunked(CHUNK), max_bytes)


async def read_capped(chunks: AsyncIterator[bytes], max_bytes: int, what: str = "upload") -> bytes:
    out: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"{what} is over the {max_bytes}-byte limit")
        out.append(chunk)
    return b"".join(out)


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk():
        yield chunk


def is_csv(request: web.Request) -> bool:
    """Whether a POST /add carries a CSV (raw, or a multipart upload) rather than JSON."""
    return request.content_type in CSV_TYPES or request.content_type.startswith("multipart/")
