"""How /search answers: hits as JSON, with verify's drawing evidence when `evidence=1`."""

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

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


async def results_response(
    request: web.Request, query: bytes | str | Path, hits: list[Hit], params: Mapping[str, Any]
) -> web.Response:
    """`{"results": [...]}`; with `evidence=1`, verified hits carry an `evidence` object."""
    service = request.app[SERVICE]
    if not _evidence_wanted(params.get("evidence")):
        return web.json_response({"results": [h.as_json() for h in hits]})
    source = _source(service)
    if isinstance(query, str):
        raise BadRequest("evidence needs an image query")
    loop = asyncio.get_running_loop()
    results = await loop.run_in_executor(None, partial(attach, source, query, hits))
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
