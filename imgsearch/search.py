"""Search: embed the query, ask the index, turn neighbours into hits. No HTTP in here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .embedders import Embedder
from .images import decode, read_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One result: the stored image and its embedding distance (1 - cosine, lower = closer)."""

    id: int
    image: str
    distance: float

    def as_json(self) -> dict[str, Any]:
        return {"image": self.image, "distance": round(self.distance, 6)}


class Searcher:
    """Finds the stored images closest to a query image."""

    def __init__(
        self, catalog: Catalog, embedder: Embedder, *, max_file_bytes: int, max_pixels: int
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels

    def by_path(self, path: Path, limit: int) -> list[Hit]:
        data, _ = read_file(path, self.max_file_bytes)
        return self.by_bytes(data, limit)

    def by_bytes(self, data: bytes, limit: int) -> list[Hit]:
        decoded = decode(data, min_side=self.embedder.input_size, max_pixels=self.max_pixels)
        return self.by_vector(self.embedder.embed_images([decoded.image])[0], limit)

    def by_vector(self, vector: np.ndarray, limit: int) -> list[Hit]:
        (neighbours,) = self.catalog.nearest(vector[None, :], limit)
        return [Hit(n.id, n.path, max(0.0, 1.0 - n.similarity)) for n in neighbours]
