"""How /search answers: hits as JSON with their metadata, and verify's drawing evidence
when `evidence=1`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from ..comparators.verify import VerifyComparator
from ..errors import BadRequest
from ..evidence import EvidenceSource, attach
from ..search import Hit
from ..service import Service
from .keys import SERVICE
from .metadata import with_metadata

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


async def results_response(
    request: web.Request, query: bytes | str | Path, hits: list[Hit], params: Mapping[str, Any]
) -> web.Response:
    """`{"results": [...]}`; with `evidence=1`, verified hits carry an `evidence` object."""
    service = request.app[SERVICE]
    loop = asyncio.get_running_loop()
    if not _evidence_wanted(params.get("evidence")):
        results = [h.as_json() for h in hits]
    elif isinstance(query, str):
        raise BadRequest("evidence needs an image query")
    else:
        source = _source(service)
        results = await loop.run_in_executor(None, partial(attach, source, query, hits))
    if hits:
        store = service.catalog.store
        ids = [h.id for h in hits]
        await loop.run_in_executor(None, with_metadata, store, results, ids)
    return web.json_response({"results": results})


def _evidence_wanted(raw: Any) -> bool:
    word = "" if raw is None else str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadRequest(f"evidence must be 0 or 1, got {raw!r}")


def _source(service: Service) -> EvidenceSource:
    verify = service.comparators.get("verify") if "verify" in service.comparators else None
    if not isinstance(verify, VerifyComparator):
        raise BadRequest("evidence needs the verify comparator, which is not installed")
    limits = service.searcher
    return EvidenceSource(
        verify, service.features, service.catalog.store, limits.max_file_bytes, limits.max_pixels
    )
