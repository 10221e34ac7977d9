"""Indexing jobs: start without waiting, watch progress, cancel, and survive a restart."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app

from .helpers import ClientFactory, get_json, photo

Client = TestClient[web.Request, web.Application]
FINISHED = {"done", "failed", "cancelled", "interrupted"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "many"
    out.mkdir()
    base = photo("astronaut", 400)
    for i in range(48):
        base.rotate(i * 7).save(out / f"{i:03}.png")
    return out


async def start(client: Client, target: Path) -> str:
    resp = await client.get("/add", params={"image": str(target), "wait": "0"})
    body = await resp.json()
    assert resp.status == 202, body
    assert body["state"] in {"queued", "running"} and body["url"] == f"/jobs/{body['job']}"
    assert resp.headers["Location"] == body["url"]
    return str(body["job"])


async def until(client: Client, job_id: str, check: Any) -> dict[str, Any]:
    for _ in range(3000):
        job: dict[str, Any] = await get_json(client, f"/jobs/{job_id}")
        if check(job):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job never got there: {job}")


@pytest.mark.slow  # a 48-image job
async def test_job_runs_to_done_with_progress(client: Client, folder: Path) -> None:
    job_id = await start(client, folder)
    seen_running = await until(client, job_id, lambda j: j["state"] != "queued")
    job = await until(client, job_id, lambda j: j["state"] in FINISHED)
    assert seen_running["state"] in {"running", "done"}
    assert job["state"] == "done" and job["error"] is None
    assert (job["done"], job["total"], job["added"], job["failed"]) == (48, 48, 48, 0)
    assert job["images_per_s"] > 0 and job["eta_s"] is None
    assert job["started"] >= job["created"] and job["finished"] >= job["started"]
    listing = await get_json(client, "/jobs")
    assert listing["jobs"][0]["id"] == job_id
    assert (await get_json(client, "/stats"))["images"] == 48


async def test_post_jobs_and_failed_single_file(client: Client, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_text("nope")
    resp = await client.post("/jobs", json={"image": str(tmp_path / "bad.jpg")})
    assert resp.status == 202
    job = await until(client, (await resp.json())["job"], lambda j: j["state"] in FINISHED)
    assert job["state"] == "failed" and "not a recognised image" in job["error"]


@pytest.mark.slow  # a 48-image job
async def test_cancel_keeps_what_was_embedded_and_rerun_completes(
    client: Client, folder: Path
) -> None:
    job_id = await start(client, folder)
    await until(client, job_id, lambda j: j["done"] >= 8)
    resp = await client.delete(f"/jobs/{job_id}")
    job = await resp.json()
    assert resp.status == 200 and job["state"] == "cancelled"
    assert 0 < job["added"] < 48
    stats = await get_json(client, "/stats")
    assert stats["images"] == stats["index"]["vectors"] == job["added"]
    report = await get_json(client, "/add", image=str(folder))
    assert (report["skipped"], report["added"]) == (job["added"], 48 - job["added"])


async def test_unknown_jobs_and_missing_paths_are_404(client: Client, tmp_path: Path) -> None:
    assert (await get_json(client, "/jobs/nope", 404))["error"] == "no such job: nope"
    resp = await client.delete("/jobs/nope")
    assert resp.status == 404
    body = await get_json(client, "/add", 404, image=str(tmp_path / "none"), wait="0")
    assert "no such file" in body["error"]


@pytest.mark.slow  # a 48-image job
async def test_restart_reports_interrupted_job_and_rerun_skips_done(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, folder: Path
) -> None:
    first = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    job_id = await start(first, folder)
    await until(first, job_id, lambda j: j["done"] >= 8)
    await first.close()  # shutdown: the running job stops after its batch

    second = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    job = await get_json(second, f"/jobs/{job_id}")
    assert job["state"] == "interrupted" and 0 < job["added"] < 48
    indexed = (await get_json(second, "/stats"))["images"]
    assert indexed >= job["added"]
    report = await get_json(second, "/add", image=str(folder))
    assert report["skipped"] == indexed and report["added"] == 48 - indexed


async def test_cancel_keeps_the_job_and_delete_forgets_it_for_good(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, folder: Path
) -> None:
    """POST /jobs/ID/cancel: the job stays readable. DELETE /jobs/ID: cancel, then 404 for
    every later read, after a restart too."""
    client = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    kept = await start(client, folder)
    await until(client, kept, lambda j: j["done"] >= 8)
    resp = await client.post(f"/jobs/{kept}/cancel")
    job = await resp.json()
    assert resp.status == 200 and job["state"] == "cancelled" and job["id"] == kept
    assert (await get_json(client, f"/jobs/{kept}"))["state"] == "cancelled"
    gone = await start(client, folder)
    resp = await client.delete(f"/jobs/{gone}")
    assert resp.status == 200 and (await resp.json())["state"] in FINISHED
    assert "no such job" in (await get_json(client, f"/jobs/{gone}", 404))["error"]
    assert (await client.post(f"/jobs/{gone}/cancel")).status == 404
    assert (await client.delete(f"/jobs/{gone}")).status == 404
    listed = [j["id"] for j in (await get_json(client, "/jobs"))["jobs"]]
    assert kept in listed and gone not in listed
    await client.close()
    again = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    listed = [j["id"] for j in (await get_json(again, "/jobs"))["jobs"]]
    assert kept in listed and gone not in listed


async def test_a_waiting_add_wakes_when_its_job_ends_not_at_a_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`until_set` on a job's `Ended` is woken by the setting thread: with polls an hour apart
    it still returns as soon as another thread sets it; a plain Event still works by polling."""
    import threading

    from imgsearch.jobs import Ended
    from imgsearch.web import offload

    monkeypatch.setattr(offload, "FIRST_POLL_S", 3600.0)
    monkeypatch.setattr(offload, "POLL_S", 3600.0)
    ended = Ended()
    waiter = asyncio.ensure_future(offload.until_set(ended))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    threading.Timer(0.05, ended.set).start()
    await asyncio.wait_for(waiter, timeout=30)
    await asyncio.wait_for(offload.until_set(ended), timeout=30)  # already set: returns
    calls: list[int] = []
    ended.on_set(lambda: calls.append(1))  # already set: called at once
    assert calls == [1]


def test_ended_survives_a_closed_loop_and_plain_events_still_poll() -> None:
    """A waiter whose loop has closed (the client went away) does not break the job thread."""
    import threading

    from imgsearch.jobs import Ended
    from imgsearch.web import offload

    ended = Ended()
    loop = asyncio.new_event_loop()
    waiter = loop.create_task(offload.until_set(ended))
    loop.run_until_complete(asyncio.sleep(0.01))
    waiter.cancel()
    loop.run_until_complete(asyncio.gather(waiter, return_exceptions=True))
    loop.close()
    ended.set()  # the callback meets a closed loop: no error here
    assert ended.is_set()
    plain = threading.Event()
    threading.Timer(0.05, plain.set).start()
    asyncio.run(asyncio.wait_for(offload.until_set(plain), timeout=30))


def test_a_queued_job_cancelled_ends_at_once_and_a_cancel_outlives_a_shutdown(
    config: Config, tiny_embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a job queued behind a running one waited for that whole run (60 s from the
    route) and answered it still queued; a running job a user cancelled became `interrupted`
    when the daemon stopped before it ended."""
    import threading
    import time

    from imgsearch.service import Service

    first, second = tmp_path / "first.jpg", tmp_path / "second.jpg"
    photo("astronaut", 96).save(first)
    photo("coffee", 96).save(second)
    service = Service(config, embedder=tiny_embedder)
    try:
        gate = threading.Event()
        real = service.ingester.embed
        monkeypatch.setattr(service.ingester, "embed", lambda b: (gate.wait(30), real(b))[1])
        running = service.jobs.submit(first, False)
        queued = service.jobs.submit(second, False)
        start = time.monotonic()
        cancelled = service.jobs.cancel(queued.id, timeout=10)
        assert time.monotonic() - start < 5, "waited for the job before it"
        assert cancelled.state == "cancelled" and cancelled.finished is not None
        assert cancelled.ended.is_set() and cancelled.started is None
        saved = {r.id: r.state for r in service.catalog.store.jobs.recent(10)}
        assert saved[queued.id] == "cancelled"

        service.jobs.cancel(running.id, timeout=0)  # the user's cancel, then a shutdown ...
        service.jobs.interrupt()
        gate.set()  # ... before the batch in flight ended
        assert running.ended.wait(30)
        assert (running.state, queued.state) == ("cancelled", "cancelled")
    finally:
        gate.set()
        service.close()


async def test_queueing_an_add_never_stops_the_event_loop(client: Client, tmp_path: Path) -> None:
    """The job's record is an SQLite write: queued on the loop, it stopped every request
    (/health too) while a long write (a big folder's removal) held the database."""
    from imgsearch.web.keys import SERVICE

    photo("coffee", 200).save(tmp_path / "coffee.jpg")
    store = client.app[SERVICE].catalog.store
    held, answered, released = threading.Event(), threading.Event(), threading.Event()

    def long_write() -> None:
        with store.db.write():
            held.set()
            answered.wait(30)  # until /health answered (a stopped loop: 30 s)
            released.set()

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert held.wait(30)
        add = asyncio.ensure_future(
            client.post("/jobs", json={"image": str(tmp_path / "coffee.jpg"), "wait": False})
        )
        await asyncio.sleep(0.3)  # the add waits for the database
        assert (await client.get("/health")).status == 200
        assert not released.is_set(), "/health waited for the write: the loop was stopped"
        answered.set()
        assert (await add).status == 202
    finally:
        answered.set()
        writer.join()


def test_a_job_keeps_the_first_thousand_errors_and_counts_them_all() -> None:
    """300,000 broken files made a 32 MB report, rebuilt for each look at the job and
    written to SQLite every few seconds."""
    from imgsearch.ingest import AddReport, FileError
    from imgsearch.ingest.report import ERRORS_KEPT
    from imgsearch.jobs import ERRORS_SHOWN, Job

    job = Job("j1", "path", "/pics", False)
    for i in range(ERRORS_KEPT + 500):
        job.report.fail(FileError(f"/pics/{i}.jpg", "cannot decode image"))
    shown = job.as_json()
    assert shown["failed"] == ERRORS_KEPT + 500 and len(shown["errors"]) == ERRORS_SHOWN
    saved = json.loads(job.row().report)
    assert saved["failed"] == ERRORS_KEPT + 500 and len(saved["errors"]) == ERRORS_KEPT
    assert Job.from_row(job.row()).report.failed == ERRORS_KEPT + 500
    # A part merged in (a URL add's batches) counts what it counted, not what it lists; an
    # error listed without a failure (refused metadata of an image added) stays one.
    part = AddReport()
    for i in range(ERRORS_KEPT + 10):
        part.fail(FileError(f"/dl/{i}.jpg", "cannot decode image"))
    part.note(FileError("/dl/ok.jpg", "added without its metadata"))
    whole = AddReport()
    whole.merge(part, names={"/dl/0.jpg": "https://x/0.jpg"})
    assert whole.failed == ERRORS_KEPT + 10 and len(whole.errors) == ERRORS_KEPT
    assert whole.errors[0].image == "https://x/0.jpg"
