"""How /search answers: hits as JSON with their metadata, and verify's drawing evidence
when `evidence=1`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..comparators.verify import VerifyComparator
from ..errors import BadRequest
from ..evidence import EvidenceSource, attach
from ..search import Hit
from ..service import Service
from .metadata import with_metadata
from .offload import blocking


def plain_results(service: Service, hits: list[Hit]) -> list[dict[str, Any]]:
    """Hits as JSON with their metadata (blocking: run off the loop, in the search's own hop,
    so a search costs the event loop one hand-off to a thread, not two)."""
    results = [h.as_json() for h in hits]
    if hits:
        with_metadata(service.catalog.store, results, [h.id for h in hits])
    return results


async def evidence_results(service: Service, image: bytes | Path, hits: list[Hit]) -> list[Any]:
    """Hits as JSON with their metadata, verified hits with verify's drawing `evidence`."""
    results = await blocking(attach, _source(service), image, hits)
    if hits:
        await blocking(with_metadata, service.catalog.store, results, [h.id for h in hits])
    return results


def _source(service: Service) -> EvidenceSource:
    verify = service.comparators.get("verify") if "verify" in service.comparators else None
    if not isinstance(verify, VerifyComparator):
        raise BadRequest("evidence needs the verify comparator, which is not installed")
    limits = service.searcher
    return EvidenceSource(
        verify, service.features, service.catalog.store, limits.max_file_bytes, limits.max_pixels
    )
