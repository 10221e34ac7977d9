"""Jobs' saved records: every start reads what a crash or a full disk left, and they stay
bounded (the bulk jobs' DATA_DIR/imports and exports/ID.json, the adds' `jobs` table)."""

from __future__ import annotations

import dataclasses
import errno
import json
import time
from pathlib import Path

import pytest

from imgsearch.bulk import records as records_module
from imgsearch.bulk.exports import ExportManager
from imgsearch.catalog import Catalog
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.files import TEMP_PREFIX
from imgsearch.jobs import HISTORY, Job
from imgsearch.service import Service

from .helpers import photo


def test_a_record_cut_short_or_unreadable_never_stops_a_start(tmp_path: Path) -> None:
    """A kill -9 during a record's save left `.tmp-*.json`, which the start read as a record
    and failed on, every start; an empty or hand-edited one did the same."""
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, "m/test", 8)
    exports = ExportManager(catalog, data)
    job = exports.submit(tmp_path / "out")
    assert job.ended.wait(60) and job.state == "done"
    exports.close()
    folder = data / "exports"
    (folder / f"{TEMP_PREFIX}x1y2.json").write_text('{"id": "cut')  # a save a kill cut short
    (folder / "0badc0ffee00.json").write_text("")  # a power cut's empty file
    (folder / "1badc0ffee00.json").write_text('{"id": "1badc0ffee00"}')  # a hand edit
    record = json.loads((folder / f"{job.id}.json").read_text())
    (folder / "2badc0ffee00.json").write_text(
        json.dumps({**record, "id": "2badc0ffee00", "created": "yesterday"})
    )  # (sorting the list by it was a 500 on every request)
    exports = ExportManager(catalog, data)
    try:
        assert [j.id for j in exports.list()] == [job.id]
        assert {p.name for p in folder.iterdir()} == {
            "0badc0ffee00.json.bad", "1badc0ffee00.json.bad", "2badc0ffee00.json.bad",
            f"{job.id}.json",
        }  # fmt: skip
    finally:
        exports.close()
        catalog.close()


def test_a_full_disk_at_a_jobs_first_save_leaves_no_job_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export answered 507, and its job stayed listed, queued, never run: the same
    request once space was freed was a 409 until a restart. A start that found an export
    left running could not save it as interrupted on a full disk, and failed."""
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, "m/test", 8)
    exports = ExportManager(catalog, data)
    write = records_module.write_atomic

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module, "write_atomic", full)
    with pytest.raises(OSError, match="No space left"):  # (a 507 over HTTP)
        exports.submit(tmp_path / "out")
    assert exports.list() == []
    monkeypatch.setattr(records_module, "write_atomic", write)
    job = exports.submit(tmp_path / "out")  # space freed: the same request runs
    assert job.ended.wait(60) and job.state == "done"
    exports.close()
    record = data / "exports" / f"{job.id}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "state": "running"}))
    monkeypatch.setattr(records_module, "write_atomic", full)
    exports = ExportManager(catalog, data)  # starts; the record stays as it was
    try:
        assert exports.get(job.id).state == "interrupted"
    finally:
        exports.close()
        catalog.close()


def test_the_adds_records_are_trimmed_to_those_shown(
    config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    """Every add writes a record; only the newest HISTORY were ever shown, and the table grew
    with every add for good."""
    service = Service(config, tiny_embedder)
    try:
        store = service.catalog.store
        for i in range(HISTORY + 50):
            job = Job(f"old{i:04d}", "path", f"/pics/{i}", False, state="done")
            job.created = time.time() - 10_000 + i
            store.jobs.save(job.row())
        running = Job("stillrunning", "path", "/pics/x", False, state="running")
        store.jobs.save(running.row())  # the newest: a crash left it running
    finally:
        service.close()
    photo("coffee", 120).save(tmp_path / "coffee.jpg")
    service = Service(dataclasses.replace(config), tiny_embedder)
    try:
        rows = service.catalog.store.db.reader().execute("SELECT id, state FROM jobs").fetchall()
        assert len(rows) == HISTORY and ("stillrunning", "interrupted") in rows
        assert ("old0050", "done") not in rows and ("old0051", "done") in rows
    finally:
        service.close()
