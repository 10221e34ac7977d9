"""Search: embed the query, ask the index, re-rank with comparators, return hits. No HTTP here.

With comparators, the candidate set is the top `rerank_k` of the whole query; with a
comparator that can locate parts (`verify`), it is widened by the nearest images of a few
regions of the query (tiles and a centre crop, embedded in the same batch), so a stored photo
that is only part of a screenshot or collage still reaches verification. Every candidate
keeps the whole query's similarity, so a region-only candidate ranks below all whole-query
ones unless a comparator vouches for it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .catalog import Catalog, Neighbour
from .comparators import (
    WORKING_SIZE,
    Candidate,
    Comparator,
    FeatureCache,
    FeatureError,
    Picture,
    Score,
    rerank,
)
from .comparators.base import checked
from .comparators.keypoints import limit_blas_threads
from .embedders import Embedder, TextEmbedder, lanes_of
from .errors import BadRequest, ImgSearchError
from .images import decode, read_file

log = logging.getLogger(__name__)

MIN_RERANK_K = 30
REGION_K = 10
# Smaller queries are not split into regions (a region would have almost no pixels).
MIN_REGION_QUERY_SIDE = 64
# Tiles of 60% x 60% at the four corners (overlapping) and a 50% centre crop.
REGION_BOXES = (
    (0.0, 0.0, 0.6, 0.6),
    (0.4, 0.0, 1.0, 0.6),
    (0.0, 0.4, 0.6, 1.0),
    (0.4, 0.4, 1.0, 1.0),
    (0.25, 0.25, 0.75, 0.75),
)


@dataclass(frozen=True)
class SearchOptions:
    """How to search: how many hits, which comparators, whether they may reorder."""

    limit: int = 10
    comparators: Sequence[Comparator] = ()
    rerank: bool = True
    rerank_k: int | None = None
    regions: bool = True
    allowed: np.ndarray | None = None  # only these ids (sorted int64), from folder/where filters

    @property
    def candidates(self) -> int:
        """Neighbours to fetch: `limit`; at least `rerank_k` when comparators re-rank them."""
        if not self.comparators:
            return self.limit
        return max(self.limit, self.rerank_k or MIN_RERANK_K)


@dataclass(frozen=True)
class Hit:
    """One result. `distance` is the embedding's (1 - cosine, lower = closer); with comparators,
    `score` is the fused score (higher = better) and `rank_before` the embedding rank."""

    id: int
    image: str
    distance: float
    score: float | None = None
    rank_before: int | None = None
    compare: Mapping[str, Score] = field(default_factory=dict)
    error: str | None = None
    source: str | None = None  # the URL a downloaded image came from

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "distance": round(self.distance, 6)}
        if self.source is not None:
            out["source"] = self.source
        if self.score is not None:
            out["score"] = round(self.score, 6)
            out["rank_before"] = self.rank_before
            out["compare"] = {name: s.as_json() for name, s in self.compare.items()}
            verdict = (
                self.compare["verify"].extra.get("verdict") if "verify" in self.compare else None
            )
            if verdict is not None:
                out["verdict"] = verdict
        if self.error is not None:
            out["error"] = self.error
        return out


class Searcher:
    """Finds the stored images closest to a query image."""

    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
        features: FeatureCache,
        *,
        workers: int,
        max_file_bytes: int,
        max_pixels: int,
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.features = features
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        # The pool runs one candidate per thread: each match then uses one BLAS thread.
        limit_blas_threads()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="compare")
        self._workers = workers

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def by_path(self, path: Path, options: SearchOptions) -> list[Hit]:
        data, _ = read_file(path, self.max_file_bytes)
        return self.by_bytes(data, options)

    def by_text(self, text: str, options: SearchOptions) -> list[Hit]:
        """Images matching a description (CLIP models only)."""
        if not isinstance(self.embedder, TextEmbedder):
            raise BadRequest(
                f"the model {self.embedder.model_id} has no text tower: text search needs an "
                "open_clip model (--model ViT-B-32, ...)"
            )
        if options.comparators:
            raise BadRequest("compare needs an image query; it cannot score a text query")
        with lanes_of(self.embedder).interactive():
            vector = self.embedder.embed_texts([text])
        found = self._candidates(vector, options)
        return [_plain_hit(f) for f in found[: options.limit]]

    def by_vector(self, vector: Sequence[float], options: SearchOptions) -> list[Hit]:
        """Images nearest an embedding made elsewhere (same model); any non-zero length."""
        if options.comparators:
            raise BadRequest("compare needs an image query; it cannot score a vector")
        not_finite = BadRequest("vector must hold finite numbers only (no NaN or infinity)")
        try:
            query = np.asarray(vector, dtype=np.float64).reshape(-1)
        except OverflowError:  # an integer past float64's range (JSON integers have no limit)
            raise not_finite from None
        if len(query) != self.embedder.dim:
            raise BadRequest(
                f"vector has {len(query)} values; the model {self.embedder.model_id} makes "
                f"{self.embedder.dim}"
            )
        if not np.isfinite(query).all():
            raise not_finite
        unit = unit_vector(query)[None, :]
        return [_plain_hit(f) for f in self._candidates(unit, options)[: options.limit]]

    def by_bytes(self, data: bytes, options: SearchOptions) -> list[Hit]:
        min_side = WORKING_SIZE if options.comparators else self.embedder.input_size
        image = decode(data, min_side=min_side, max_pixels=self.max_pixels).image
        comparators = list(options.comparators)
        # The query's comparator features are computed while the query is embedded.
        query = self._pool.submit(_query_features, image, comparators) if comparators else None
        views = [image]
        if (
            options.regions
            and _locates_parts(options.comparators)
            and min(image.size) >= (MIN_REGION_QUERY_SIDE)
        ):
            views += [_region(image, box) for box in REGION_BOXES]
        try:
            found = self._candidates(self._embed(views), options)
        except BaseException:
            if query is not None:
                query.cancel()
            raise
        if query is None:
            return [_plain_hit(f) for f in found[: options.limit]]
        return self._rerank(query.result(), found, options)

    def _embed(self, views: list[Image.Image]) -> np.ndarray:
        """The views' vectors. With region views, and cores to spare (several model lanes, a
        pool thread beside the one extracting the query's features), half of them are
        embedded in the pool at the same time: one model call runs on --threads threads."""
        lanes = lanes_of(self.embedder)
        split = len(views) // 2 if lanes.lanes > 1 and self._workers > 1 else 0
        rest = self._pool.submit(self._embed_now, views[len(views) - split :]) if split else None
        try:
            head = self._embed_now(views[: len(views) - split])
        except BaseException:
            if rest is not None:
                rest.cancel()
            raise
        return head if rest is None else np.vstack([head, rest.result()])

    def _embed_now(self, views: list[Image.Image]) -> np.ndarray:
        with lanes_of(self.embedder).interactive():  # ingest batches make room
            return self.embedder.embed_images(views)

    def _candidates(self, vectors: np.ndarray, options: SearchOptions) -> list[Neighbour]:
        """Whole-query neighbours, plus region neighbours scored by whole-query similarity."""
        rows = self.catalog.nearest(vectors, options.candidates, options.allowed)
        found = {n.id: n for n in rows[0]}
        extra = {n.id: n for row in rows[1:] for n in row[:REGION_K] if n.id not in found}
        if extra:
            sims = self.catalog.similarities(vectors[0], list(extra))
            for i, sim in sims.items():
                found[i] = dataclasses.replace(extra[i], similarity=sim)
        return sorted(found.values(), key=lambda f: (-f.similarity, f.id))

    def _rerank(
        self, query_features: list[Any], found: list[Neighbour], options: SearchOptions
    ) -> list[Hit]:
        comparators = list(options.comparators)
        scored = list(self._pool.map(lambda f: self._score(f, comparators, query_features), found))
        candidates = [
            Candidate(f.id, f.similarity, scores)
            for f, (scores, _) in zip(found, scored, strict=True)
        ]
        ranked = rerank(candidates)
        if not options.rerank:
            ranked.sort(key=lambda r: r.rank_before)
        by_id = {f.id: (f, error) for f, (_, error) in zip(found, scored, strict=True)}
        hits = []
        for r in ranked[: options.limit]:
            f, error = by_id[r.id]
            hits.append(
                Hit(
                    r.id,
                    f.path,
                    _distance(f.similarity),
                    r.score,
                    r.rank_before,
                    r.scores,
                    error,
                    f.source,
                )
            )
        return hits

    def _score(
        self, found: Neighbour, comparators: list[Comparator], query_features: list[Any]
    ) -> tuple[dict[str, Score], str | None]:
        """Comparator scores of one candidate; a file that cannot be read scores nothing."""
        try:
            candidate = self._candidate_features(found, comparators)
        except ImgSearchError as exc:
            return {}, exc.message
        except Exception as exc:  # a bad candidate must not fail the whole search
            log.exception("comparing %s failed", found.path)
            return {}, f"comparison failed: {exc}"
        scores = {}
        for comparator, q, c in zip(comparators, query_features, candidate, strict=True):
            if isinstance(q, FeatureError) or isinstance(c, FeatureError):
                continue  # (logged where its features failed)
            try:
                score = checked(comparator.name, comparator.compare(q, c))
            except Exception:
                log.exception("comparator %s failed on %s", comparator.name, found.path)
                continue
            if score is not None:
                scores[comparator.name] = score
        return scores, None

    def _candidate_features(self, found: Neighbour, comparators: list[Comparator]) -> list[Any]:
        """Each comparator's features of a stored image, from the cache or computed once."""
        return self.features.of_file(
            comparators,
            found.id,
            Path(found.path),
            max_file_bytes=self.max_file_bytes,
            max_pixels=self.max_pixels,
        )


def _query_features(image: Image.Image, comparators: Sequence[Comparator]) -> list[Any]:
    """Each comparator's features of the query, from one working Picture (keypoints shared);
    a FeatureError where one failed (a plugin on an odd query): the others still score."""
    picture = Picture.from_pil(image)
    out: list[Any] = []
    for comparator in comparators:
        try:
            out.append(comparator.features(picture))
        except Exception as exc:
            log.exception("%s features of the query failed", comparator.name)
            out.append(FeatureError(f"{comparator.name}: {exc}"))
    return out


def _locates_parts(comparators: Sequence[Comparator]) -> bool:
    """Whether any comparator can confirm a part-of-image match (worth region candidates)."""
    return any(getattr(c, "locates_parts", False) for c in comparators)


def _region(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = image.size
    left, top, right, bottom = box
    return image.crop((int(left * w), int(top * h), int(right * w), int(bottom * h)))


def unit_vector(query: np.ndarray) -> np.ndarray:
    """A finite vector scaled to length 1 (float32); 400 for the zero vector. Divided by its
    largest magnitude first: the norm of [1e308]*32 overflows to inf and that of [1e-200]*32
    underflows to 0, while each is a direction like any other."""
    peak = float(np.abs(query).max(initial=0.0))
    if peak == 0.0:
        raise BadRequest("vector must not be all zeros")
    scaled = query / peak
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)


def _plain_hit(found: Neighbour) -> Hit:
    return Hit(found.id, found.path, _distance(found.similarity), source=found.source)


def _distance(similarity: float) -> float:
    return max(0.0, 1.0 - similarity)
