"""The import format: Parquet shards of (path, vector, file facts), model id and dim in the schema.

Each row is one image. `path` is an absolute path or a URL (the identity `/add` gives it);
`vector` is a fixed-size list of float32 or float16 of the model's dimension. Optional columns:
`sha256`, `size`, `mtime_ns`, `width`, `height`, `source`; any other column is kept as a per-row
dict (`RowBatch.extras`). The schema's key-value metadata names the model (`imgsearch.model`,
exactly as /stats shows it) and its dimension (`imgsearch.dim`).

Shards are written atomically (temp file, fsync, rename), so a reader sees a whole shard or none.
Rows are checked one by one; a bad row (null or relative path, wrong length, NaN, zero vector) is
reported with its file and row number and the rest of the batch goes on. A local path is
normalised (`/a/./b//c` is `/a/b/c`, the identity `/add` gives that file); a fact cell of the
wrong type is converted where it says the same (`size` 1234.0, "1234"), else unknown (null, as
a NaN is). Vectors may be fixed-size lists, lists or large lists of any float or integer type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import BadRequest, ImgSearchError, NotFound
from ..files import TEMP_PREFIX, write_atomic_with
from ..ingest.checks import URL_OR_PATH
from ..memory import available_mb
from ..security import check_nameable
from ..store.rows import row_norms
from .importjob import local_path

log = logging.getLogger(__name__)

META_MODEL = b"imgsearch.model"
META_DIM = b"imgsearch.dim"
SHARD_GLOB = "*.parquet"
FACT_COLUMNS: dict[str, pa.DataType] = {
    "sha256": pa.string(),
    "size": pa.int64(),
    "mtime_ns": pa.int64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "source": pa.string(),
}
KNOWN_COLUMNS = frozenset({"path", "vector", *FACT_COLUMNS})


# Memory an import needs beside the largest row group it decodes (batches in flight, the
# index's encoders): a folder whose largest group would not fit with it is refused, where that
# group is one of BIG_GROUP_BYTES or more (a small machine's small files are never refused).
GROUP_MARGIN_MB = 1024
BIG_GROUP_BYTES = 256 << 20


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's schema says: its model, dimension and row count."""

    path: Path
    model_id: str
    dim: int
    rows: int
    # Bytes of vectors in its largest row group: Arrow decodes a list column's row group
    # whole before the first batch of it (a one-group file of 10M rows at 512-d: 20 GB).
    group_bytes: int = 0


@dataclass(frozen=True)
class BadRow:
    """A row that was not imported, and why."""

    file: str
    row: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "error": self.reason}


@dataclass
class RowBatch:
    """The good rows of one record batch: unit float32 vectors and their facts, row by row."""

    rows: list[int] = field(default_factory=list)  # row numbers in the file
    paths: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    facts: dict[str, list[Any]] = field(default_factory=dict)  # FACT_COLUMNS present
    # Each good row's cells of the columns the format does not know (metadata); empty where
    # the shard has no such column (not a dict a row: 20,000 objects a batch for nothing).
    extras: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def schema(model_id: str, dim: int, *, float16: bool = False) -> pa.Schema:
    """The import schema for one model, with its metadata."""
    value = pa.float16() if float16 else pa.float32()
    fields: list[Any] = [pa.field("path", pa.string(), nullable=False)]
    fields.append(pa.field("vector", pa.list_(value, dim), nullable=False))
    fields += [pa.field(name, kind) for name, kind in FACT_COLUMNS.items()]
    return pa.schema(fields, metadata={META_MODEL: model_id, META_DIM: str(dim)})


def write_shard(path: Path, table: pa.Table, row_group_size: int | None = None) -> None:
    """Write a Parquet file so that readers see all of it or nothing (temp, fsync, rename)."""

    def write(fh: BinaryIO) -> None:
        pq.write_table(table, fh, compression="zstd", row_group_size=row_group_size)

    write_atomic_with(path, write, durable=True, shared=True)


def shard_files(folder: Path) -> list[Path]:
    """The shards in a folder (not its subfolders), by name; temp files left by a crash skipped."""
    if not folder.is_dir():
        raise NotFound(f"not a folder: {folder}")
    found = (p for p in folder.glob(SHARD_GLOB) if not p.name.startswith(TEMP_PREFIX))
    return sorted(p for p in found if p.is_file())  # (a Spark-style folder named x.parquet: no)


def shard_info(path: Path) -> ShardInfo:
    """Read a shard's model, dimension and row count from its footer (no rows read)."""
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise BadRequest(f"{path}: not a readable Parquet file: {exc}") from None
    kv = meta.metadata or {}
    if META_MODEL not in kv or META_DIM not in kv:
        raise BadRequest(f"{path}: no imgsearch.model / imgsearch.dim in the schema metadata")
    try:
        dim = int(kv[META_DIM])
    except ValueError:
        raise BadRequest(f"{path}: imgsearch.dim is not an integer: {kv[META_DIM]!r}") from None
    arrow = meta.schema.to_arrow_schema()
    if not {"path", "vector"} <= set(arrow.names):
        raise BadRequest(f"{path}: needs the columns path and vector, has {sorted(arrow.names)}")
    kind = arrow.field("vector").type
    if not _numbers(kind):
        raise BadRequest(f"{path}: vector must be a list of floats, got {kind}")
    if pa.types.is_fixed_size_list(kind) and kind.list_size != dim:
        raise BadRequest(f"{path}: vector holds {kind.list_size} values, imgsearch.dim says {dim}")
    largest = max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=0)
    width = max(1, getattr(kind.value_type, "bit_width", 32) // 8)
    return ShardInfo(path, kv[META_MODEL].decode(), dim, int(meta.num_rows), largest * dim * width)


def fits_in_memory(info: ShardInfo) -> None:
    """507 where the shard's largest row group of vectors, which Arrow decodes whole, would
    not fit in the memory the system has free, with GROUP_MARGIN_MB for the rest of the
    import: the OOM killer would end the daemon instead."""
    free = available_mb()
    big = info.group_bytes >= BIG_GROUP_BYTES
    if big and free is not None and info.group_bytes / 1e6 + GROUP_MARGIN_MB > free:
        raise ImgSearchError(
            f"{info.path} has a row group of {info.group_bytes / 1e9:.1f} GB of vectors, which "
            f"is read whole, and {free / 1e3:.1f} GB of memory is free: write it with smaller "
            "row groups (pyarrow: pq.write_table(table, path, row_group_size=100_000)); "
            "nothing was imported",
            507,
        )


def _numbers(kind: pa.DataType) -> bool:
    """Whether a column of `kind` is a list (of any kind) of floats or integers."""
    lists = pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
    if not (lists or pa.types.is_large_list(kind)):
        return False
    value = kind.value_type
    return bool(pa.types.is_floating(value) or pa.types.is_integer(value))


Rename = Callable[[str], str]
TINY_NORM = 1e-15  # a float32 row norm below it may have underflowed: summed in float64


def read_batches(
    info: ShardInfo, *, start_row: int = 0, batch_rows: int = 20_000, rename: Rename | None = None
) -> Iterator[RowBatch]:
    """The checked rows of a shard from `start_row` on, a record batch at a time. A resume
    starts at the row group that holds `start_row` (the rows before it were all decoded
    again: 2 s to reach row 480,000 of a 500,000-row file of 25 groups)."""
    parquet = pq.ParquetFile(info.path)
    first, groups = 0, parquet.metadata.num_row_groups
    for group in range(groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first + rows > start_row:
            break
        first += rows
    else:
        return
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=list(range(group, groups))):
        if first + batch.num_rows > start_row:
            skip = max(0, start_row - first)
            yield check_batch(batch, info, first, skip=skip, rename=rename)
        first += batch.num_rows


def check_batch(
    batch: pa.RecordBatch,
    info: ShardInfo,
    first: int,
    *,
    skip: int = 0,
    rename: Rename | None = None,
) -> RowBatch:
    """Validate a record batch (row numbers start at `first`, paths through `rename`).

    Bad rows are reported in `bad`, never raised."""
    batch = batch.slice(skip)
    first += skip
    n = batch.num_rows
    vectors, norms, ok, reasons = _vectors(batch.column("vector"), info.dim)
    paths = batch.column("path").to_pylist()
    if rename is not None:  # (on the paths as stored: `/mnt//a/x.jpg` is under `/mnt/a`)
        paths = [rename(local_path(p)) if isinstance(p, str) else p for p in paths]
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path.startswith(URL_OR_PATH):
            ok[i], reasons[i] = False, _bad_path(path)
        elif path.startswith("/"):
            paths[i] = local_path(path)
            if (why := _unnameable(path)) is not None:
                ok[i], reasons[i] = False, why
    good = np.flatnonzero(ok)
    out = RowBatch(
        bad=[BadRow(str(info.path), first + i, reasons[i]) for i in range(n) if not ok[i]]
    )
    out.rows = (good + first).tolist()
    out.paths = [str(paths[i]) for i in good]
    if len(good) < n:
        vectors, norms = vectors[good], norms[good]
    vectors /= norms[:, None]  # unit length (our own array: a copy when rows were dropped)
    out.vectors = vectors
    picked = batch.take(pa.array(good, pa.int64())) if len(good) < n else batch
    for name, kind in FACT_COLUMNS.items():
        if name in batch.schema.names:
            out.facts[name] = _facts(picked.column(name), kind)
    extra = [c for c in batch.schema.names if c not in KNOWN_COLUMNS]
    out.extras = _extras(picked.select(extra)) if extra else []
    return out


def _extras(table: pa.RecordBatch) -> list[dict[str, Any]]:
    """The metadata cells of each row. A column Python cannot hold as it is (a timestamp in
    the year 10000, a date past 9999) goes as text; a cell that still cannot be read is left
    out (one failed the whole import before, every row of every file)."""
    columns: dict[str, list[Any]] = {}
    for name, column in zip(table.schema.names, table.columns, strict=True):
        try:
            columns[name] = column.to_pylist()
        except (ValueError, OverflowError, pa.ArrowException):
            columns[name] = _cells_as_text(column)
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _cells_as_text(column: Any) -> list[Any]:
    try:
        return list(pc.cast(column, pa.string()).to_pylist())
    except (pa.ArrowException, ValueError, OverflowError):
        return [None] * len(column)


def _unnameable(path: str) -> str | None:
    """Why no file system here could hold `path` (a NUL byte, a name over NAME_MAX bytes),
    as `/add` refuses it; None where it could."""
    if "\x00" in path:
        return "path contains a NUL byte"
    try:
        check_nameable(path, "path")
    except BadRequest as exc:
        return exc.message
    return None


def _bad_path(path: Any) -> str:
    """Why a row's path (after path_map) is refused; for a URL of another scheme (`s3://`, a
    shard of `imgsearch embed s3://...`), how to take it in."""
    why = f"path must be absolute or an http(s) URL, got {path!r}"
    if isinstance(path, str) and "://" in path:
        why += "; map its prefix to a path with path_map (imgsearch import --path-map OLD=NEW)"
    return why


def _facts(column: Any, kind: pa.DataType) -> list[Any]:
    """A fact column's cells as `kind` (FACT_COLUMNS): cast where every cell says the same
    (NaN as null), else cell by cell, a cell that cannot be converted unknown (None)."""
    if column.type == kind:
        return list(column.to_pylist())
    if pa.types.is_floating(column.type):
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
    try:
        return list(pc.cast(column, kind, safe=True).to_pylist())
    except (pa.ArrowException, TypeError):
        return [_cell(value, kind) for value in column.to_pylist()]


def _cell(value: Any, kind: pa.DataType) -> Any:
    """One fact cell as `kind`, or None where it is not one (1.5 as a size, "1.2 MB")."""
    if value is None or pa.types.is_string(kind):
        return value if value is None else str(value)
    try:
        number = int(value.strip()) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, int | float):
            return None
        if isinstance(number, float) and not number.is_integer():
            return None
        whole = int(number)
        bits = kind.bit_width - 1
        return whole if -(1 << bits) <= whole < (1 << bits) else None
    except (ValueError, OverflowError):
        return None


def _vectors(column: Any, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Float32 [n, dim] (bad rows zero), their norms, a per-row ok mask, reasons for bad rows."""
    n = len(column)
    reasons = [""] * n
    out = np.zeros((n, dim), dtype=np.float32)
    if not _numbers(column.type):
        kind = f"vector must be a list of floats, got {column.type}"
        return out, np.zeros(n, np.float32), np.zeros(n, bool), [kind] * n
    if pa.types.is_fixed_size_list(column.type) and column.type.list_size == dim:
        right = np.ones(n, dtype=bool)
        if column.null_count:
            right = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            reasons = ["" if r else "vector is null" for r in right]
    else:
        valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        right = np.asarray(valid & (lengths == dim), dtype=bool)
        for i in np.flatnonzero(~right):
            wrong = f"vector has {lengths[i]} values, not {dim}"
            reasons[i] = "vector is null" if not valid[i] else wrong
    if right.all():
        values = column.flatten().to_numpy(zero_copy_only=False)
        out[:] = np.asarray(values, dtype=np.float32).reshape(n, dim)
    elif right.any():
        values = column.filter(pa.array(right)).flatten().to_numpy(zero_copy_only=False)
        out[right] = np.asarray(values, dtype=np.float32).reshape(-1, dim)
    # NaN or inf anywhere in a row makes its norm so. A row whose float32 squares overflow
    # or underflow (values near 1e19, or 1e-23) has a direction all the same: its norm is
    # summed again in float64 (float64 for all: 9.5 ms a 20,000 x 512 batch against 1.7).
    norms = row_norms(out).astype(np.float64)
    odd = ~np.isfinite(norms) | (norms < TINY_NORM)
    if odd.any():
        norms[odd] = np.sqrt(np.einsum("ij,ij->i", out[odd], out[odd], dtype=np.float64))
    finite = np.isfinite(norms)
    for i in np.flatnonzero(right & ~finite):
        reasons[i] = "vector has NaN or infinite values"
    for i in np.flatnonzero(right & (norms == 0)):
        reasons[i] = "vector is all zeros"
    return out, norms, right & finite & (norms > 0), reasons


def table_of(
    model_id: str,
    dim: int,
    paths: list[str],
    vectors: np.ndarray,
    facts: dict[str, list[Any]] | None = None,
) -> pa.Table:
    """A table in the import schema (float32 vectors) from columns."""
    sch = schema(model_id, dim)
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    columns: dict[str, Any] = {
        "path": pa.array(paths, pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    for name, kind in FACT_COLUMNS.items():
        values = (facts or {}).get(name)
        columns[name] = pa.array(values if values is not None else [None] * len(paths), kind)
    return pa.Table.from_pydict(columns, schema=sch)
