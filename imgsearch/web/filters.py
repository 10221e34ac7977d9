"""`folder` and `where` filters of /search and /duplicates: parsed, checked, turned into the
ids the index may return (from SQLite), so `limit` results come back when that many match."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import BadRequest
from ..metadata import Filters, allowed_ids, parse_where
from ..search import SearchOptions
from ..service import Service
from .offload import blocking
from .parsing import Params

MAX_VALUES = 64  # of `folder`, and of `where`


def _values(params: Params, name: str) -> list[str]:
    """Every value of `name`: repeated in the query string or a form, a string or a list in a
    JSON body (one source, as Params has it)."""
    values: list[str] = []
    for raw in params.getall(name):
        if isinstance(raw, str):
            values.append(raw)
        elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            values += raw
        else:
            raise BadRequest(f"{name} must be a string or a list of strings")
    if len(values) > MAX_VALUES:
        raise BadRequest(f"{len(values)} {name} filters; at most {MAX_VALUES}")
    return list(dict.fromkeys(values))


def parse_filters(service: Service, params: Params) -> Filters:
    """The request's filters (400 when one is malformed)."""
    folders = tuple(str(service.paths.resolve(f, name="folder")) for f in _values(params, "folder"))
    return Filters(folders, parse_where(_values(params, "where")))


async def allowed_for(service: Service, filters: Filters) -> np.ndarray | None:
    """The ids the filters let through, read off the event loop; None without filters."""
    if not filters:
        return None
    return await blocking(allowed_ids, service.catalog.store, filters)


async def filtered(service: Service, options: SearchOptions, params: Params) -> SearchOptions:
    """The search options narrowed to the request's filters (unchanged without any)."""
    filters = parse_filters(service, params)
    if not filters:
        return options
    return dataclasses.replace(options, allowed=await allowed_for(service, filters))
