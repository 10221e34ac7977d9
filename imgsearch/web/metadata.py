"""Routes for metadata per image: replace it (POST /metadata), read one image's record
(GET /image), and the helpers that put `metadata` into search and duplicates answers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest, NotFound
from ..metadata import check_metadata
from ..store import Store
from . import parsing
from .keys import SERVICE
from .offload import blocking
from .parsing import Params

table = web.RouteTableDef()


@table.post("/metadata")
async def set_metadata(request: web.Request) -> web.Response:
    """Replace one indexed image's metadata: `{"image": PATH, "metadata": {...}}`."""
    service = request.app[SERVICE]
    body = await parsing.json_object(request)
    image = body.get("image")
    if image is not None and not isinstance(image, str):
        raise BadRequest("image must be a string path")
    path = str(service.paths.resolve(image))
    if "metadata" not in body:
        raise BadRequest("the body needs 'metadata': a JSON object")
    metadata = check_metadata(body["metadata"])
    store = service.catalog.store
    state = (await blocking(store.file_states, [path])).get(path)
    if state is None:
        raise NotFound(f"not an indexed image: {path}")
    await blocking(store.metadata.replace, {state.id: metadata})
    return web.json_response({"image": path, "metadata": metadata})


@table.get("/image")
async def image_record(request: web.Request) -> web.Response:
    """One indexed image: path, size, dimensions, sha256, added, source, metadata."""
    service = request.app[SERVICE]
    path = str(service.paths.resolve(Params(request.query).get("image")))
    record = await blocking(service.catalog.store.metadata.record, path)
    if record is None:
        raise NotFound(f"not an indexed image: {path}")
    return web.json_response(record)


def with_metadata(store: Store, results: list[dict[str, Any]], ids: list[int]) -> None:
    """Add `metadata` to each result whose image has some (blocking: run off the loop)."""
    found = store.metadata.get(ids)
    for result, image_id in zip(results, ids, strict=True):
        if image_id in found:
            result["metadata"] = found[image_id]


def members_with_metadata(store: Store, report: dict[str, Any]) -> dict[str, Any]:
    """A duplicates report whose members carry their `metadata` (where they have some)."""
    members = [m for c in report["clusters"] for m in c["images"]]
    states = store.file_states([m["image"] for m in members])
    ids = [states[m["image"]].id if m["image"] in states else -1 for m in members]
    with_metadata(store, members, ids)
    return report
