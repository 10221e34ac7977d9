"""Per-image metadata as the extra columns of import/export shards.

Import: every column the format does not know is a metadata key; a row's non-null cells are its
metadata (strings, numbers and booleans as they are; other Arrow values as text), and they
replace what the image had. Export: each image's metadata back as string columns (values as the
text `where=KEY:VALUE` matches), a key per column. A key named like a format column (a shop's
`size`) goes out as `meta:size`, and a column `meta:KEY` imports as the key KEY: no key can hold
a `:` (`where=` splits on it), so that name is never a key of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import ImgSearchError
from ..metadata import check_metadata
from ..store import Metadata, Store
from ..store.metadata import match_text
from .format import KNOWN_COLUMNS, BadRow, RowBatch

META_PREFIX = "meta:"  # a column for a metadata key named like a format column


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


def export_columns(store: Store, ids: Sequence[int]) -> dict[str, list[str | None]]:
    """The images' metadata as string columns (a key per column, sorted; None where absent)."""
    found = store.metadata.get(list(ids))
    keys = sorted({key for metadata in found.values() for key in metadata})
    columns: dict[str, list[str | None]] = {}
    for key in keys:
        values = [found.get(i, {}).get(key) for i in ids]
        name = META_PREFIX + key if key in KNOWN_COLUMNS else key
        columns[name] = [None if v is None else match_text(v) for v in values]
    return columns
