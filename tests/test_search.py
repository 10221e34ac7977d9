"""Searcher internals: when the query is split into regions, and what that adds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.search import REGION_BOXES, SearchOptions
from imgsearch.service import Service

from .helpers import jpeg_bytes, photo


class CountingEmbedder:
    """Wraps an embedder and records how many images each embed call gets."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id, self.dim, self.input_size = inner.model_id, inner.dim, inner.input_size
        self.calls: list[int] = []

    def prepare(self, image: Image.Image) -> Any:
        return self.inner.prepare(image)

    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        return self.inner.embed_prepared(batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.calls.append(len(images))
        return self.inner.embed_images(images)


@pytest.fixture
def service(config: Config, tiny_embedder: Embedder, photos: dict[str, Path]) -> Any:
    svc = Service(config, embedder=CountingEmbedder(tiny_embedder))
    svc.ingester.add(photos["chelsea"].parent)
    yield svc
    svc.close()


@pytest.mark.parametrize(
    ("names", "views"),
    [([], 1), (["sift"], 1), (["histogram", "orb"], 1), (["verify"], 6), (["sift", "verify"], 6)],
)
def test_regions_only_for_comparators_that_locate_parts(
    service: Service, names: list[str], views: int
) -> None:
    embedder: CountingEmbedder = service.embedder  # type: ignore[assignment]
    options = SearchOptions(limit=3, comparators=service.comparators.parse(names))
    hits = service.searcher.by_bytes(jpeg_bytes(photo("chelsea", 400)), options)
    assert embedder.calls[-1] == views == 1 + len(REGION_BOXES) * (views > 1)
    assert len(hits) == 3


def test_tiny_query_is_not_split(service: Service) -> None:
    embedder: CountingEmbedder = service.embedder  # type: ignore[assignment]
    options = SearchOptions(limit=2, comparators=service.comparators.parse(["verify"]))
    for size in ((1, 1), (1, 300), (40, 40)):
        service.searcher.by_bytes(jpeg_bytes(Image.new("RGB", size, "red")), options)
        assert embedder.calls[-1] == 1


def test_only_a_re_ranking_widens_the_candidates() -> None:
    """Without comparators (a vector, a text, a plain image search) the index is asked for
    `limit` neighbours, not rerank_k: with quantized codes each one costs a re-scoring read."""
    assert SearchOptions(limit=7).candidates == 7
    assert SearchOptions(limit=7, rerank_k=50).candidates == 7
    assert SearchOptions(limit=7, comparators=[object()]).candidates == 30  # type: ignore[list-item]
    assert SearchOptions(limit=7, comparators=[object()], rerank_k=50).candidates == 50  # type: ignore[list-item]
