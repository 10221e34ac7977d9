"""`folder` and `where` filters of /search and /duplicates: parsed, checked, turned into the
ids the index may return (from SQLite), so `limit` results come back when that many match."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from aiohttp import web
from multidict import MultiMapping

from ..errors import BadRequest
from ..metadata import Filters, allowed_ids, parse_where
from ..search import SearchOptions
from .keys import SERVICE

MAX_FOLDERS = 64


def _values(query: MultiMapping[str], body: Mapping[str, Any] | None, name: str) -> list[str]:
    """Every value of `name`: repeated in the query string, and a string or list in a body."""
    values = list(query.getall(name, []))
    raw = None if body is None else body.get(name)
    if isinstance(raw, str):
        values.append(raw)
    elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        values += raw
    elif raw is not None:
        raise BadRequest(f"{name} must be a string or a list of strings")
    return list(dict.fromkeys(values))


def parse_filters(request: web.Request, body: Mapping[str, Any] | None = None) -> Filters:
    """The request's filters (400 when one is malformed)."""
    paths = request.app[SERVICE].paths
    raw_folders = _values(request.query, body, "folder")
    if len(raw_folders) > MAX_FOLDERS:
        raise BadRequest(f"{len(raw_folders)} folder filters; at most {MAX_FOLDERS}")
    folders = tuple(str(paths.resolve(f, name="folder")) for f in raw_folders)
    where = parse_where(_values(request.query, body, "where"))
    return Filters(folders, where)


async def allowed_for(request: web.Request, filters: Filters) -> np.ndarray | None:
    """The ids the filters let through, read off the event loop; None without filters."""
    if not filters:
        return None
    store = request.app[SERVICE].catalog.store
    return await asyncio.get_running_loop().run_in_executor(None, allowed_ids, store, filters)


async def filtered(
    request: web.Request, options: SearchOptions, body: Mapping[str, Any] | None = None
) -> SearchOptions:
    """The search options narrowed to the request's filters (unchanged without any)."""
    filters = parse_filters(request, body)
    if not filters:
        return options
    return dataclasses.replace(options, allowed=await allowed_for(request, filters))
