"""How /search answers: hits as JSON with their metadata, and verify's drawing evidence
when `evidence=1`."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..comparators.verify import VerifyComparator
from ..errors import BadRequest
from ..evidence import EvidenceSource, attach
from ..search import Hit
from ..service import Service
from . import parsing
from .metadata import with_metadata
from .offload import blocking
from .parsing import Params


async def results_response(
    service: Service, image: bytes | Path | None, hits: list[Hit], params: Params
) -> web.Response:
    """`{"results": [...]}`; with `evidence=1` and a query `image` (bytes or a stored path;
    None for a text or a vector, which have no pixels to draw on), verified hits carry an
    `evidence` object."""
    if not parsing.flag(params.get("evidence"), "evidence") or image is None:
        results = [h.as_json() for h in hits]
    else:
        results = await blocking(attach, _source(service), image, hits)
    if hits:
        await blocking(with_metadata, service.catalog.store, results, [h.id for h in hits])
    return web.json_response({"results": results})


def _source(service: Service) -> EvidenceSource:
    verify = service.comparators.get("verify") if "verify" in service.comparators else None
    if not isinstance(verify, VerifyComparator):
        raise BadRequest("evidence needs the verify comparator, which is not installed")
    limits = service.searcher
    return EvidenceSource(
        verify, service.features, service.catalog.store, limits.max_file_bytes, limits.max_pixels
    )
