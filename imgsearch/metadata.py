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
from typing import Any

import numpy as np

from .errors import BadRequest, PayloadTooLarge
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
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
            raise BadRequest(
                f"metadata keys must be non-empty strings of at most "
                f"{MAX_KEY_CHARS} characters, got {key!r}"
            )
        if ":" in key:
            raise BadRequest(f"metadata key {key!r} has a ':' (where=KEY:VALUE splits on it)")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"metadata {key!r} is not a finite number")
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(
                f"metadata {key!r} must be a string, number or boolean, "
                f"got {type(value).__name__ if value is not None else 'null'}"
            )
        out[key] = value
    return out


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


def csv_metadata(header: Sequence[str], row: Sequence[str], skip: int) -> Metadata:
    """The metadata of one CSV row: every column but `skip` (the path or url), as strings;
    blank cells are left out."""
    out: Metadata = {}
    for i, name in enumerate(header):
        if i == skip or not name.strip() or i >= len(row) or not row[i].strip():
            continue
        out[name.strip()] = row[i].strip()
    return check_metadata(out)


def metadata_writer(
    store: Store,
    by_path: Mapping[str, Metadata],
    by_url: Mapping[str, Metadata] | None = None,
) -> Callable[[Any], None]:
    """A job's `after` hook: give the images it stored (by path, or by the URL they came
    from) their metadata, replacing what they had."""

    def write(_job: Any) -> None:
        objects: dict[int, Metadata] = {}
        for path, state in store.file_states(list(by_path)).items():
            objects[state.id] = by_path[path]
        for url, ids in store.metadata.ids_by_source(list(by_url or {})).items():
            objects.update((i, (by_url or {})[url]) for i in ids)
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
