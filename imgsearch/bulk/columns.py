"""Per-image metadata as the extra columns of import/export shards.

Import: every column the format does not know is a metadata key; a row's non-null cells are its
metadata (strings, numbers and booleans as they are; other Arrow values as text), and they
replace what the image had. Export: each image's metadata back, a key per column, typed as the
key's values are (booleans, integers or floats; text as `where=KEY:VALUE` matches it where they
are mixed). A key named like a format column (a shop's
`size`) goes out as `meta:size`, and a column `meta:KEY` imports as the key KEY: no key can hold
a `:` (`where=` splits on it), so that name is never a key of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ..errors import ImgSearchError
from ..metadata import check_metadata
from ..store import Metadata, Store
from ..store.metadata import match_text
from .format import KNOWN_COLUMNS, BadRow, RowBatch

META_PREFIX = "meta:"  # a column for a metadata key named like a format column
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def row_metadata(cells: dict[str, Any]) -> Metadata:
    """One row's metadata from its extra cells (nulls and non-finite numbers left out)."""
    out: dict[str, Any] = {}
    for key, value in cells.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        key = key.removeprefix(META_PREFIX)
        out[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return check_metadata(out)


def import_metadata(store: Store, shard: str, batch: RowBatch) -> list[BadRow]:
    """Give the batch's stored images their row's metadata (only when the shard has extra
    columns); a row whose metadata is refused keeps its image and is reported, not failed."""
    if not any(batch.extras):
        return []
    states = store.file_states(batch.paths)
    objects: dict[int, Metadata] = {}
    refused: list[BadRow] = []
    for row, path, cells in zip(batch.rows, batch.paths, batch.extras, strict=True):
        state = states.get(path)
        if state is None:  # the row itself failed in the ingest core
            continue
        try:
            objects[state.id] = row_metadata(cells)
        except ImgSearchError as exc:
            refused.append(BadRow(shard, row, f"imported without its metadata: {exc.message}"))
    store.metadata.replace(objects)
    return refused


def export_columns(store: Store, ids: Sequence[int]) -> dict[str, pa.Array]:
    """The images' metadata as columns, a key per column (sorted; null where absent), typed
    as the key's values are (column_of)."""
    found = store.metadata.get(list(ids))
    keys = sorted({key for metadata in found.values() for key in metadata})
    columns: dict[str, pa.Array] = {}
    for key in keys:
        name = META_PREFIX + key if key in KNOWN_COLUMNS else key
        columns[name] = column_of([found.get(i, {}).get(key) for i in ids])
    return columns


def column_of(values: Sequence[Any]) -> pa.Array:
    """A key's values as one column: booleans, integers (int64) or floats where every value
    is one of those, which an import reads back as they were; otherwise text, as `where=`
    matches them (`12`, `1.5`, `true`), read back as strings."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in present):
        return pa.array(values, pa.int64())
    if present and all(type(v) is float for v in present):
        return pa.array(values, pa.float64())
    return pa.array([None if v is None else match_text(v) for v in values], pa.string())
