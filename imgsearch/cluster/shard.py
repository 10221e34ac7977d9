"""`embed_shard`: a list of files in, one Parquet shard (and its failure records) out.

A pure function of its files and the model: the same code runs inside a Ray actor and locally.
Reading and decoding run ahead of the model in a small thread pool. A file that cannot be read
or decoded (missing, truncated, a bomb, not an image) becomes a failure record (path, reason);
nothing in one file can stop the shard. Both outputs are written atomically, the failures
first, so the shard's vector file existing means the shard is finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..bulk.format import table_of, write_shard
from ..embedders import Embedder
from ..errors import ImgSearchError, PayloadTooLarge
from ..images import decode, read_file

log = logging.getLogger(__name__)

FAILURES_DIR = "failures"


@dataclass(frozen=True)
class Limits:
    """The daemon's limits on one file, and the batching of the model."""

    max_bytes: int
    max_pixels: int
    batch_size: int = 32
    decode_threads: int = 2


@dataclass(frozen=True)
class ShardResult:
    shard: int
    images: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class _Ready:
    facts: dict[str, Any]
    tensor: Any


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def is_done(out: Path, shard: int) -> bool:
    return (out / shard_name(shard)).exists()


def local_path(source: str) -> str | None:
    """The absolute path a `file://` (or fsspec `local://`) URL names; None for any other
    source. A file of this machine's filesystem is stored by its path, the identity `/add`
    gives it, whatever URL named it: a `file://` row was refused by every import."""
    scheme, sep, rest = source.partition("://")
    if not sep or scheme.lower() not in ("file", "local"):
        return None
    return os.path.abspath(rest) if rest else "/"


def read_bytes(path: str, max_bytes: int) -> tuple[bytes, int, int | None]:
    """The bytes of a local file or an fsspec URL, its size and mtime_ns (None when unknown)."""
    if "://" not in path:
        data, st = read_file(Path(path), max_bytes)
        return data, st.st_size, st.st_mtime_ns
    import fsspec

    with fsspec.open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"file is over the {max_bytes}-byte limit")
    return data, len(data), None


def _prepare(path: str, embedder: Embedder, limits: Limits) -> _Ready | str:
    """Read, hash, decode and preprocess one file; the failure reason instead on any error."""
    try:
        data, size, mtime_ns = read_bytes(path, limits.max_bytes)
        decoded = decode(data, min_side=embedder.input_size, max_pixels=limits.max_pixels)
        tensor = embedder.prepare(decoded.image)
    except ImgSearchError as exc:
        return exc.message
    except Exception as exc:  # one file must never stop the shard
        log.warning("unexpected error while reading %s: %r", path, exc)
        return f"unexpected error: {exc}"
    facts = {
        "path": path,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": size,
        "mtime_ns": mtime_ns,
        "width": decoded.width,
        "height": decoded.height,
    }
    return _Ready(facts, tensor)


def _decoded(
    files: Sequence[str], embedder: Embedder, limits: Limits
) -> Iterator[tuple[str, _Ready | str]]:
    """Each file prepared, in order, with a bounded number decoding ahead."""
    ahead = limits.decode_threads * 2 + limits.batch_size
    with ThreadPoolExecutor(limits.decode_threads, thread_name_prefix="decode") as pool:
        pending: list[tuple[str, Future[_Ready | str]]] = []
        queue = iter(files)
        for path in queue:
            pending.append((path, pool.submit(_prepare, path, embedder, limits)))
            if len(pending) >= ahead:
                done_path, future = pending.pop(0)
                yield done_path, future.result()
        for done_path, future in pending:
            yield done_path, future.result()


def embed_files(
    files: Sequence[str], embedder: Embedder, limits: Limits
) -> tuple[list[dict[str, Any]], np.ndarray, list[tuple[str, str]]]:
    """Facts and unit vectors of the files that embedded, and (path, reason) of the others."""
    facts: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    batch: list[_Ready] = []

    def flush() -> None:
        if batch:
            parts.append(embedder.embed_prepared([r.tensor for r in batch]))
            facts.extend(r.facts for r in batch)
            batch.clear()

    for path, ready in _decoded(files, embedder, limits):
        if isinstance(ready, str):
            failures.append((path, ready))
            continue
        batch.append(ready)
        if len(batch) >= limits.batch_size:
            flush()
    flush()
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    return facts, vectors, failures


def embed_shard(
    shard: int, files: Sequence[str], embedder: Embedder, limits: Limits, out: Path
) -> ShardResult:
    """Embed one shard's files and write out/shard-NNNNN.parquet (and its failure records)."""
    started = time.monotonic()
    files = [local_path(f) or f for f in files]  # (a plan made before they were listed so)
    facts, vectors, failures = embed_files(files, embedder, limits)
    failed_dir = out / FAILURES_DIR
    failed_dir.mkdir(exist_ok=True)
    failed = pa.table(
        {"path": [p for p, _ in failures], "reason": [r for _, r in failures]},
        schema=pa.schema([("path", pa.string()), ("reason", pa.string())]),
    )
    write_shard(failed_dir / shard_name(shard), failed)
    columns = {k: [f[k] for f in facts] for k in ("sha256", "size", "mtime_ns", "width", "height")}
    paths = [f["path"] for f in facts]
    table = table_of(embedder.model_id, embedder.dim, paths, vectors, columns)
    write_shard(out / shard_name(shard), table)
    seconds = time.monotonic() - started
    return ShardResult(shard, len(facts), len(failures), seconds)
