"""Export: the library written out in the import format, a chunk of rows per shard."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..catalog import Catalog
from ..errors import BadRequest, Conflict
from ..store import UNKNOWN_SHA256
from .columns import export_columns
from .format import table_of, write_shard

log = logging.getLogger(__name__)

ROWS_PER_SHARD = 100_000


@dataclass(frozen=True)
class ExportReport:
    dir: str
    files: int
    rows: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"dir": self.dir, "files": self.files, "rows": self.rows, "seconds": self.seconds}


def prepare_folder(folder: Path) -> None:
    """Create the folder, or accept an existing empty one; anything else is a 400."""
    if not folder.is_absolute():
        raise BadRequest(f"dir must be an absolute path, got {folder}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise Conflict(f"{folder} exists and is not an empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadRequest(f"cannot create {folder}: {exc.strerror}") from None


def export(catalog: Catalog, folder: Path, rows_per_shard: int = ROWS_PER_SHARD) -> ExportReport:
    """Write every present image (path, unit vector, file facts, metadata as extra string
    columns) as shards part-NNNNN.parquet."""
    started = time.monotonic()
    prepare_folder(folder)
    store = catalog.store
    ids = store.ids()
    files = written = 0
    for start in range(0, len(ids), rows_per_shard):
        chunk = ids[start : start + rows_per_shard].tolist()
        rows = store.images.image_rows(chunk)
        found: dict[int, np.ndarray] = {}
        for part in store.vectors(ids=chunk):
            found.update(zip(part.ids.tolist(), part.vectors, strict=True))
        keep = [i for i in chunk if i in rows and i in found]  # removed meanwhile: skipped
        if not keep:
            continue
        picked = [rows[i] for i in keep]
        facts: dict[str, list[Any]] = {
            "sha256": [None if r.sha256.startswith(UNKNOWN_SHA256) else r.sha256 for r in picked],
            "size": [r.size if r.size >= 0 else None for r in picked],
            "mtime_ns": [r.mtime_ns if r.mtime_ns >= 0 else None for r in picked],
            "width": [r.width or None for r in picked],
            "height": [r.height or None for r in picked],
            "source": [r.source for r in picked],
        }
        vectors = np.stack([found[i] for i in keep])
        table = table_of(catalog.model_id, catalog.dim, [r.path for r in picked], vectors, facts)
        for key, values in export_columns(store, keep).items():
            table = table.append_column(pa.field(key, pa.string()), pa.array(values, pa.string()))
        write_shard(folder / f"part-{files:05d}.parquet", table)
        files += 1
        written += len(keep)
    log.info("exported %d images to %s in %d files", written, folder, files)
    return ExportReport(str(folder), files, written, round(time.monotonic() - started, 3))
