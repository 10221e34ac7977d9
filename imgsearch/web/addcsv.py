"""POST /add with a CSV: a `url` column (downloads) or a `path` column (files on this
machine); every other column becomes the metadata of that row's image."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from multidict import MultiDict

from ..errors import BadRequest, ImgSearchError
from ..ingest import FileError
from ..metadata import csv_columns, csv_metadata
from ..security import PathPolicy
from ..store import Metadata
from . import parsing
from .parsing import Params

COLUMNS = ("path", "url")  # the first of these the header has names the images


@dataclass
class CsvAdd:
    """What a CSV asks to add: URLs or files, and each row's metadata (a FileError where it
    was refused: the image is added without it)."""

    urls: list[str] | None = None
    files: list[Path] | None = None
    errors: list[FileError] = field(default_factory=list)  # rows refused (bad paths)
    by_url: dict[str, Metadata | FileError] = field(default_factory=dict)
    by_path: dict[str, Metadata | FileError] = field(default_factory=dict)


async def posted_csv_add(
    request: web.Request, max_bytes: int, paths: PathPolicy, fields: Iterable[str]
) -> tuple[CsvAdd, Params]:
    """Read and check an uploaded CSV (raw text/csv, or the multipart field `csv`), and the
    request's other parameters (`fields`: the form fields a multipart upload may carry)."""
    form_fields: MultiDict[str] = MultiDict()
    if request.content_type in parsing.CSV_TYPES:
        data: bytes | None = await parsing.raw(request, max_bytes)
    else:
        data, form_fields = await parsing.multipart(request, "csv", max_bytes, fields)
    if data is None:
        raise BadRequest("multipart upload needs a file field named 'csv'")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("the CSV is not UTF-8 text") from None
    out = CsvAdd()
    _parse(text, out, paths)
    return out, Params(request.query, form_fields, "form")


def _parse(text: str, out: CsvAdd, paths: PathPolicy) -> None:
    _allow_fields(len(text))
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows, None) or []
        names = [name.strip().lower() for name in header]
        column = next((c for c in COLUMNS if c in names), None)
        if column is None:
            found = ", ".join(repr(n) for n in names[:10]) or "nothing"
            raise BadRequest(
                f"the CSV needs a header row with a 'path' or a 'url' column; found {found}"
            )
        index = names.index(column)
        columns = csv_columns(header, index)
        if column == "url":
            out.urls = []
        else:
            out.files = []
        cells: list[str] = []
        line = rows.line_num + 1  # where the next row starts (a quoted cell may span lines)
        for row in rows:
            cell = row[index].strip() if index < len(row) else ""
            if cell:
                cells.append(cell)
                _row(cell, _metadata(columns, row, cell, line), out, paths)
            line = rows.line_num + 1
    except csv.Error as exc:
        raise BadRequest(f"malformed CSV at line {rows.line_num}: {exc}") from None
    parsing.checked_count(cells, "URLs" if column == "url" else "paths")


def _allow_fields(chars: int) -> None:
    """Let the csv module read cells as long as the CSV itself (already capped at the upload
    limit), so that a long cell reaches the per-row metadata check instead of failing the
    whole add with csv's 128 KiB "field larger than field limit".

    The limit is process-wide (no reader takes its own), so it is only ever raised, never
    restored: a restore could lower it under another thread's reader in the middle of a
    CSV. Nothing else in the daemon reads CSV, and the limit stays bounded by the largest
    CSV an add accepts."""
    if csv.field_size_limit() < chars:
        csv.field_size_limit(chars)


def _metadata(
    columns: list[tuple[int, str]], row: list[str], cell: str, line: int
) -> Metadata | FileError:
    """A row's metadata, or (refused: over the size limit) the error its image is added with."""
    try:
        return csv_metadata(columns, row)
    except ImgSearchError as exc:  # one bad row is a note on that image, not a failed add
        why = f"line {line}: added without its metadata: {exc.message}"
        return FileError(cell, why, exc.status)


def _row(cell: str, metadata: Metadata | FileError, out: CsvAdd, paths: PathPolicy) -> None:
    if out.urls is not None:
        out.urls.append(cell)
        if metadata:
            out.by_url[cell] = metadata
        return
    try:
        path = paths.resolve(cell, name="path")
    except ImgSearchError as exc:  # one bad row is a failed file, not a failed add
        out.errors.append(FileError(cell, exc.message, exc.status))
        return
    if out.files is not None:
        out.files.append(path)
    if metadata:
        out.by_path[str(path)] = metadata
