"""Metadata per image: what an object may hold, and filters (`folder`, `where`) on it.

An image's metadata is a flat JSON object: string keys, string/number/boolean values, at most
MAX_BYTES as compact JSON. Filters narrow a search to the ids SQLite says match, which the
index then searches among.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import BadRequest, PayloadTooLarge
from .ingest import AddReport, FileError
from .store import Metadata, Store

MAX_BYTES = 16 * 1024
MAX_KEY_CHARS = 128
MAX_FILTERS = 64


def check_metadata(raw: Any) -> Metadata:
    """A valid metadata object, or BadRequest / PayloadTooLarge (413) saying what is wrong."""
    if not isinstance(raw, dict):
        raise BadRequest("metadata must be a JSON object")
    size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_BYTES:
        raise PayloadTooLarge(f"metadata is {size} bytes as JSON, over the {MAX_BYTES}-byte limit")
    out: Metadata = {}
    for key, value in raw.items():
        check_key(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"metadata {key!r} is not a finite number")
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(
                f"metadata {key!r} must be a string, number or boolean, "
                f"got {type(value).__name__ if value is not None else 'null'}"
            )
        out[key] = value
    return out


def check_key(key: Any) -> str:
    """A valid metadata key, or BadRequest saying why not."""
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
        raise BadRequest(
            f"metadata keys must be non-empty strings of at most "
            f"{MAX_KEY_CHARS} characters, got {key!r}"
        )
    if ":" in key:
        raise BadRequest(f"metadata key {key!r} has a ':' (where=KEY:VALUE splits on it)")
    return key


def parse_where(raws: Sequence[str]) -> dict[str, list[str]]:
    """`KEY:VALUE` filters grouped by key (AND across keys, OR within one); 400 when malformed."""
    if len(raws) > MAX_FILTERS:
        raise BadRequest(f"{len(raws)} where filters; at most {MAX_FILTERS}")
    out: dict[str, list[str]] = {}
    for raw in raws:
        key, sep, value = raw.partition(":")
        if not sep or not key.strip():
            raise BadRequest(f"where must be KEY:VALUE, got {raw!r}")
        out.setdefault(key, []).append(value)
    return out


def csv_columns(header: Sequence[str], skip: int) -> list[tuple[int, str]]:
    """A CSV header's metadata columns, (index, key): every named column but `skip` (the path
    or url), the name stripped. 400 for a name that is no key, or one named twice (compared
    stripped): the later cell would silently overwrite the earlier in every row."""
    columns: list[tuple[int, str]] = []
    seen = {header[skip].strip()}
    for i, raw in enumerate(header):
        name = raw.strip()
        if i == skip or not name:
            continue
        if name in seen:
            raise BadRequest(f"the CSV header names the column {name!r} more than once")
        seen.add(check_key(name))
        columns.append((i, name))
    return columns


def csv_metadata(columns: Sequence[tuple[int, str]], row: Sequence[str]) -> Metadata:
    """The metadata of one CSV row (its `columns` from csv_columns), as strings; blank cells
    are left out. PayloadTooLarge (413) when it is over MAX_BYTES."""
    out: Metadata = {}
    for i, name in columns:
        if i < len(row) and row[i].strip():
            out[name] = row[i].strip()
    return check_metadata(out)


class EndedAdd(Protocol):
    """What the metadata writer reads of an add job once it has ended (jobs.Job)."""

    @property
    def landed(self) -> Mapping[str, str]:
        """A URL job's URLs (stripped, as check_url gives them) -> the file each was stored as."""
        ...

    @property
    def report(self) -> AddReport: ...


def metadata_writer(
    store: Store, metadata: Mapping[str, Metadata | FileError], *, by_url: bool = False
) -> Callable[[EndedAdd], None]:
    """A job's `after` hook: give each image the job stored its metadata, replacing what it
    had. Keys are paths or, `by_url`, the URLs the job was given; a FileError in place of
    metadata (a CSV row whose metadata was refused) leaves the image's as it was and is listed
    in the report's errors."""

    def write(job: EndedAdd) -> None:
        # A URL by the file it landed as, not by the images' `source`: that is only the first
        # URL an image came from, so a URL whose picture changed would reach its older images,
        # and one whose picture was stored from another URL none.
        at: dict[str, Metadata | FileError] = {}
        for key, value in metadata.items():
            path = job.landed.get(key.strip()) if by_url else key
            if path is not None:
                at[path] = value
        states = store.file_states(list(at))
        objects: dict[int, Metadata] = {}
        for path, value in at.items():
            state = states.get(path)
            if state is None:  # not stored: that file's add failed, and its report says so
                continue
            if isinstance(value, FileError):
                # Listed, not counted as failed: the image itself was added (as a bulk
                # import's row with refused metadata is).
                job.report.note(value)
            else:
                objects[state.id] = value
        store.metadata.replace(objects)

    return write


@dataclass(frozen=True)
class Filters:
    """Which images a search or duplicates run may return: at or below any of `folders`
    (absolute, resolved), and with, for every `where` key, one of its values."""

    folders: tuple[str, ...] = ()
    where: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.folders or self.where)


def allowed_ids(store: Store, filters: Filters) -> np.ndarray | None:
    """Sorted ids the filters let through (from SQLite), or None without filters."""
    if not filters:
        return None
    sets = []
    if filters.folders:
        sets.append(store.metadata.ids_under(filters.folders))
    if filters.where:
        sets.append(store.metadata.matching(filters.where))
    allowed = sets[0]
    for other in sets[1:]:
        allowed = np.intersect1d(allowed, other, assume_unique=True)
    return allowed
