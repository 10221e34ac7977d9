"""FAISS index keyed by the store's row ids, with atomic, checksummed, stamped saves.

The file is one header line of JSON (model, dim, generation, count, sha256 of the payload)
followed by the serialised FAISS index. It is written to a temp file, fsynced and renamed over
the old one, so a crash leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"IMGSEARCH-FAISS 1\n"
TEMP_SUFFIX = ".tmp"


class IndexFileError(Exception):
    """The saved index cannot be used (missing, truncated, corrupt, other model)."""


@dataclass(frozen=True)
class Stamp:
    """What a saved index says about itself."""

    model_id: str
    dim: int
    generation: int
    count: int


class VectorIndex:
    """Inner product over unit vectors (IndexIDMap2 on IndexFlatIP); thread-safe."""

    def __init__(self, dim: int) -> None:
        import faiss

        self.dim = dim
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return "IndexIDMap2(IndexFlatIP)"

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, replace: bool = False) -> None:
        """Add vectors under `ids`; with `replace`, first drop any vectors those ids had."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            if replace:
                self._index.remove_ids(ids)
            if len(ids):
                self._index.add_with_ids(vectors, ids)

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The stored vector of each id present in the index."""
        found = {}
        with self._lock:
            for i in ids:
                try:
                    found[int(i)] = self._index.reconstruct(int(i))
                except RuntimeError:  # not in the index (removed meanwhile)
                    continue
        return found

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of every id and its vector (n x dim), for batch work off the lock."""
        import faiss

        with self._lock:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            vectors = self._index.index.reconstruct_n(0, int(self._index.ntotal))
        return ids, np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids, best first, among the sorted `allowed` ids if given (inside
        the FAISS search: an ID selector); missing neighbours have id -1."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        params: Any = None
        if allowed is not None:  # `allowed` and `selector` stay referenced during the search
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
            params = faiss.SearchParameters()
            params.sel = selector
            k = min(k, len(allowed))
        with self._lock:
            k = max(1, min(k, int(self._index.ntotal)))
            sims, ids = self._index.search(queries, k, params=params)
        return sims, ids

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: Path, stamp: Stamp) -> None:
        """Write atomically: temp file, fsync, rename, fsync the folder."""
        import faiss

        with self._lock:
            payload = faiss.serialize_index(self._index).tobytes()
            count = int(self._index.ntotal)
        header = {
            "model": stamp.model_id,
            "dim": stamp.dim,
            "generation": stamp.generation,
            "count": count,
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        tmp = path.with_name(path.name + TEMP_SUFFIX)
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + json.dumps(header).encode() + b"\n")
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: Path, model_id: str, dim: int) -> tuple[VectorIndex, Stamp]:
        """Read and verify a saved index; raise IndexFileError saying why it cannot be used."""
        import faiss

        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IndexFileError("no index file") from None
        if not data.startswith(MAGIC):
            raise IndexFileError("not an imgsearch index file")
        end = data.find(b"\n", len(MAGIC))
        try:
            header = json.loads(data[len(MAGIC) : end])
            stamp = Stamp(
                header["model"], int(header["dim"]), int(header["generation"]), int(header["count"])
            )
            digest = str(header["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"unreadable header: {exc}") from None
        payload = data[end + 1 :]
        if hashlib.sha256(payload).hexdigest() != digest:
            raise IndexFileError("checksum mismatch (truncated or damaged)")
        if (stamp.model_id, stamp.dim) != (model_id, dim):
            raise IndexFileError(f"made by {stamp.model_id} ({stamp.dim}-d)")
        index = cls(dim)
        try:
            index._index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(f"FAISS cannot read it: {exc}") from None
        if int(index._index.ntotal) != stamp.count or index._index.d != dim:
            raise IndexFileError("contents do not match its header")
        return index, stamp
