"""Routes: /add (a path or URLs, waiting for the run unless wait=0) and the add jobs, /jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..errors import BadRequest, ImgSearchError, NotFound
from ..jobs import Job
from ..metadata import check_metadata, metadata_writer
from ..service import Service
from . import parsing
from .addcsv import CsvAdd, posted_csv_add
from .keys import SERVICE
from .offload import blocking, until_set
from .parsing import Params

OPTIONS = ("update", "wait")  # query parameters, also accepted as body keys or form fields

table = web.RouteTableDef()


@table.get("/add")
async def add_get(request: web.Request) -> web.Response:
    """`image` (a path) or `url` (repeatable: one fails as one file would, several report)."""
    return await _add(request, Params(request.query))


@table.post("/add")
async def add_post(request: web.Request) -> web.Response:
    """JSON (a path, `url` or `urls`), or a CSV of URLs: raw text/csv or a multipart `csv`."""
    if parsing.is_csv(request):
        service = request.app[SERVICE]
        max_bytes = service.config.max_upload_bytes
        table, params = await posted_csv_add(request, max_bytes, service.paths, OPTIONS)
        if any(name in params for name in ("image", "url", "urls", "metadata")):
            raise BadRequest("a CSV add takes its images and metadata from the CSV only")
        return await _csv_add(request, params, table)
    body = await parsing.json_object(request)
    return await _add(request, Params(request.query, body, "JSON body"))


@table.post("/jobs")
async def jobs_post(request: web.Request) -> web.Response:
    """Queue an add from a JSON body; the same as /add with wait=0."""
    body = {**await parsing.json_object(request), "wait": "0"}  # a job never waits
    return await _add(request, Params(request.query, body, "JSON body"))


@table.get("/jobs")
async def jobs_list(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [job.as_json() for job in request.app[SERVICE].jobs.list()]})


@table.get("/jobs/{id}")
async def jobs_get(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].jobs.get(request.match_info["id"]).as_json())


@table.post("/jobs/{id}/cancel")
async def jobs_cancel(request: web.Request) -> web.Response:
    """Stop a job after its batch in flight and answer it, finished; it stays listed."""
    jobs = request.app[SERVICE].jobs
    job = await blocking(jobs.cancel, jobs.get(request.match_info["id"]).id)
    return web.json_response(job.as_json())


@table.delete("/jobs/{id}")
async def jobs_delete(request: web.Request) -> web.Response:
    """Cancel a job as POST /jobs/ID/cancel does, then forget it: later reads answer 404."""
    jobs = request.app[SERVICE].jobs
    job = await blocking(jobs.forget, jobs.get(request.match_info["id"]).id)
    return web.json_response(job.as_json())


async def _add(request: web.Request, params: Params) -> web.Response:
    """Queue an add of a path or of URLs; wait for it (the blocking form) unless wait=0."""
    service = request.app[SERVICE]
    update = parsing.flag(params.get("update"), "update")
    wait = parsing.flag(params.get("wait"), "wait", default=True)
    if params.one_of("image", "url", "urls") == "image":
        raw_path = params.get("image")
        if not isinstance(raw_path, str):
            raise BadRequest("image must be a string path")
        path = service.paths.resolve(raw_path)
        # Off the loop: the checks stat the file and the job's record is an SQLite write,
        # which waits while a long write (a big folder's removal) holds the database.
        after = await blocking(_metadata_after, service, params, path=path)
        return await _accepted_or_done(
            await blocking(service.jobs.submit, path, update, after), wait
        )
    urls, strict = parsing.url_list(params)
    if urls is None:
        raise BadRequest("missing parameter: image (an absolute path), or url or urls")
    after = _metadata_after(service, params, urls=urls)
    job = await blocking(service.jobs.submit_urls, urls, update, strict=strict, after=after)
    return await _accepted_or_done(job, wait)


async def _csv_add(request: web.Request, params: Params, table: CsvAdd) -> web.Response:
    """Queue the add of a CSV's URLs or files, each row's other columns its metadata."""
    service = request.app[SERVICE]
    update = parsing.flag(params.get("update"), "update")
    wait = parsing.flag(params.get("wait"), "wait", default=True)
    store = service.catalog.store
    if table.files is not None:
        after = metadata_writer(store, table.by_path) if table.by_path else None
        job = await blocking(service.jobs.submit_files, table.files, update, after, table.errors)
    else:
        after = metadata_writer(store, table.by_url, by_url=True) if table.by_url else None
        job = await blocking(service.jobs.submit_urls, table.urls or [], update, after=after)
    return await _accepted_or_done(job, wait)


def _metadata_after(
    service: Service, params: Params, *, path: Path | None = None, urls: list[str] | None = None
) -> Callable[[Job], None] | None:
    """The hook that gives the added image (one file, or each URL) the body's `metadata`."""
    if "metadata" not in params:
        return None
    metadata = check_metadata(params.get("metadata"))  # null too is a 400
    store = service.catalog.store
    if urls is not None:
        return metadata_writer(store, {url: metadata for url in urls}, by_url=True)
    if path is None or not path.exists():
        raise NotFound(f"no such file: {path}")
    if not path.is_file():
        raise BadRequest("metadata is for one image: give a file, not a folder")
    return metadata_writer(store, {str(path): metadata})


async def _accepted_or_done(job: Job, wait: bool) -> web.Response:
    """202 with the job's URL (wait=0), or the report once the job has ended."""
    if not wait:
        location = f"/jobs/{job.id}"
        return web.json_response(
            {"job": job.id, "state": job.state, "url": location},
            status=202,
            headers={"Location": location},
        )
    await until_set(job.ended)
    if job.state == "failed":
        raise ImgSearchError(job.error or "indexing failed", job.error_status)
    return web.json_response(job.report.as_json())
