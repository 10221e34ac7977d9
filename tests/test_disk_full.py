"""A full disk under the data directory: clear errors (507, a failed job saying why), a daemon
that keeps serving and starts again, nothing stored lost, and work that resumes once space is
freed. The disk is a real tmpfs, filled up by a ballast file (tests/helpers.small_disk); a
read-only one is refused at the start in one line."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch.bulk.format import table_of, write_shard
from imgsearch.bulk.imports import ImportManager
from imgsearch.catalog import DB_FILE, Catalog
from imgsearch.derived import DerivedFiles
from imgsearch.embedders import Embedder
from imgsearch.errors import DiskFull, disk_full
from imgsearch.index import Policy
from imgsearch.index import base as B
from imgsearch.index import worker as W
from imgsearch.index.base import TEMP_SUFFIX
from imgsearch.store import FileFacts, NewImage

from .helpers import TINY_MODEL, Daemon, fill, ingester, small_disk, wait_for

MODEL_ID = f"open_clip/{TINY_MODEL}/random"
DIM = 32
ROWS = 20_000  # a shard's rows
THRESHOLDS = {  # an IVF base with fine codes from the first shard; compaction every 2,000
    "IMGSEARCH_INDEX_EXACT_MAX": "1000",
    "IMGSEARCH_INDEX_DELTA_MAX": "2000",
}


def test_disk_full_is_recognised_through_its_causes() -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full(enospc) is not None
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    full = disk_full(sqlite3.OperationalError("database or disk is full"))
    assert full is not None and full.status == 507 and "disk is full" in full.message
    try:
        try:
            raise enospc
        except OSError as exc:
            raise RuntimeError("saving the base failed") from exc
    except RuntimeError as wrapped:
        assert isinstance(disk_full(wrapped), DiskFull)
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(sqlite3.OperationalError("no such table: images")) is None
    assert disk_full(ValueError("bad")) is None


def test_the_worker_retries_later_each_time_and_says_why_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(W, "WAKE_SECONDS", 0.01)
    monkeypatch.setattr(W, "RETRY_MAX_SECONDS", 0.04)
    calls: list[int] = []
    errors: list[str | None] = []
    ran: list[str] = []
    stop = threading.Event()

    def job() -> str | None:
        errors.append(worker.error)
        calls.append(len(calls))
        if len(calls) <= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        if len(calls) == 5:
            return "compact"
        return None

    worker = W.Worker(job, ran.append, stop)
    try:
        wait_for("six jobs", lambda: len(calls) >= 6, timeout=10)
    finally:
        stop.set()
        worker.join(5)
    assert errors[0] is None and all("disk is full" in (e or "") for e in errors[1:5])
    assert errors[5] is None and ran == ["compact"]
    waits = []
    for worker.failures in (1, 2, 3, 4):
        waits.append(worker.retry_in())
    assert waits == [0.01, 0.02, 0.04, 0.04]  # doubled each time, up to the bound


def test_a_retry_asked_for_ends_the_wait_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "WAKE_SECONDS", 0.01)
    calls: list[float] = []
    stop = threading.Event()

    def job() -> str | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return None

    worker = W.Worker(job, lambda ran: None, stop)
    worker.retry_in = lambda: 600.0  # type: ignore[method-assign]
    try:
        wait_for("a failure", lambda: worker.full is not None, timeout=10)
        time.sleep(0.1)
        asked = time.monotonic()
        worker.retry_now()
        assert worker.full is None
        wait_for("the next try", lambda: len(calls) >= 2, timeout=5)
        assert calls[1] - asked < 2.0 and worker.error is None
    finally:
        stop.set()
        worker.join(5)


def exact_base(count: int, generation: int) -> B.Base:
    empty = B.empty_exact("m", DIM, generation)
    ids = np.arange(count, dtype=np.int64)
    empty.index.add_with_ids(np.random.default_rng(0).random((count, DIM), np.float32), ids)
    return B.Base(empty.index, ids, dataclasses.replace(empty.meta, count=count))


def test_a_base_is_not_written_where_the_disk_has_no_room_for_it(tmp_path: Path) -> None:
    """Estimated from the last base saved (its size a vector), before any byte is written:
    a full disk would fail every other write meanwhile."""
    with small_disk(tmp_path / "index", 8) as folder:
        first = B.save(exact_base(2_000, 1), folder)
        bigger = exact_base(8_000, 2)  # ~1 MB: 4x the first, plus margins
        fill(folder, leave=1 << 20)
        free = shutil.disk_usage(folder).free
        with pytest.raises(DiskFull, match="next base needs about 2 MB .* 1 MB free"):
            B.save(bigger, folder, first)
        assert shutil.disk_usage(folder).free == free and B.saved(folder) == [first]
        fill(folder, leave=3 << 20)
        saved = B.save(bigger, folder, first)
        assert len(B.load(saved, "m", DIM).ids) == 8_000


@pytest.mark.parametrize("kind", ["tmpfs", "btrfs"])
def test_fine_codes_on_a_full_disk_fail_with_enospc_not_a_bus_error(
    tmp_path: Path, kind: str
) -> None:
    """Rows written through a mapping where the disk cannot give a block (a hole of the sparse
    file; on btrfs, copy-on-write, also a row written before) kill the process (SIGBUS);
    written with pwrite, a full disk is an error to report, for new rows and rewritten ones
    (a start-up replays rows the table has), and the rows are there once it has room."""
    with small_disk(tmp_path / "disk", 8 if kind == "tmpfs" else 160, kind) as disk:
        code = textwrap.dedent(
            f"""
            import errno, os, numpy as np
            from pathlib import Path
            from imgsearch.index.fine import FineTable
            disk = Path({str(disk)!r})
            table = FineTable(disk / "fine.u8", 64)
            old = np.arange(20_000)  # 1.3 MB, on the disk
            table.put(old, np.full((len(old), 64), 7, np.uint8))
            table.flush()
            with open(disk / "ballast", "wb", buffering=0) as fh:  # the disk filled up
                try:
                    while True:
                        fh.write(bytes(1 << 16))
                except OSError:
                    pass
            os.sync()
            new = np.arange(20_000, 70_000)  # beyond the file's 65,536 rows: it grows, sparse
            for ids, value in ((new, 9), (old, 8)):
                try:
                    table.put(ids, np.full((len(ids), 64), value, np.uint8))
                    table.flush()
                    print("written")
                except OSError as exc:
                    print("refused", errno.errorcode[exc.errno])
            os.remove(disk / "ballast")
            os.sync()
            table.put(new, np.full((len(new), 64), 9, np.uint8))
            table.put(old[:10], np.full((10, 64), 8, np.uint8))
            print("after", int(table.get(new).min()), int(table.get(old[:10]).min()))
            """
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.split("\n")
    assert lines[0] == "refused ENOSPC" and lines[-2] == "after 9 8", done.stdout
    # tmpfs and ext4 overwrite a block in place; btrfs must find a new one
    assert lines[1] == ("written" if kind == "tmpfs" else "refused ENOSPC"), done.stdout


def test_sqlite_on_a_full_disk_refuses_the_write_and_keeps_every_committed_row(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    written, refused = 0, None
    with small_disk(tmp_path / "data", 6) as data:
        catalog = Catalog(data, "m", DIM, Policy())
        try:
            for batch in range(1000):  # the disk fills long before
                items = [
                    NewImage(FileFacts(f"/v/{batch}/{i}.jpg", 1, 1, f"h{batch}-{i}", 1, 1), v)
                    for i, v in enumerate(rng.standard_normal((500, DIM)).astype(np.float32))
                ]
                try:
                    catalog.put(items)
                except Exception as exc:
                    refused = exc
                    break
                written += len(items)
            assert refused is not None and isinstance(disk_full(refused), DiskFull), refused
            assert catalog.store.count() == written > 0 and len(catalog.index) == written
        finally:
            catalog.close()
        with closing(sqlite3.connect(data / DB_FILE)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT count(*) FROM images").fetchone() == (written,)
        again = Catalog(data, "m", DIM, Policy())
        try:
            assert again.store.count() == written == len(again.index)
        finally:
            again.close()


def test_a_cache_write_on_a_full_disk_is_skipped_not_an_error(tmp_path: Path) -> None:
    with small_disk(tmp_path / "data", 1) as data:
        files = DerivedFiles(data / "cache")
        ballast = fill(data)
        files.write("features/sift", 7, (1, 2, 3), b"x" * 10_000)  # no room: not kept, no error
        assert files.read("features/sift", 7, (1, 2, 3)) is None and files.failing
        assert not list((data / "cache").rglob("*7*"))  # nor a temp file left
        ballast.unlink()
        files.write("features/sift", 7, (1, 2, 3), b"x" * 10_000)
        assert files.read("features/sift", 7, (1, 2, 3)) == b"x" * 10_000 and not files.failing


@pytest.mark.slow
def test_a_read_only_data_dir_is_refused_in_one_line(
    tmp_path: Path, tiny_model_config: Path
) -> None:
    with small_disk(tmp_path / "data", 1) as data:
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        daemon = Daemon(data, tiny_model_config)
        try:
            assert daemon.proc.wait(60) == 2
        finally:
            daemon.proc.kill()
    said = daemon.output()
    assert f"the data directory {data} cannot be written (Read-only file system)" in said
    assert "Traceback" not in said


def test_an_import_that_would_wait_for_a_base_the_disk_cannot_take_stops(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    """The index's folder full (SQLite has room): the import's training cannot be saved, and the
    import, which waits for the index to fold its rows before writing more, stops saying why
    instead of waiting for good; its rows stay, and a new import asks the worker to try again."""
    dim = tiny_embedder.dim
    rows = 10_000
    folder = tmp_path / "in"
    folder.mkdir()
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    paths = [f"/lib/{i}.jpg" for i in range(rows)]
    write_shard(folder / "a.parquet", table_of(tiny_embedder.model_id, dim, paths, vectors))
    data = tmp_path / "data"
    # IVF-Flat (no fine codes) from 100 rows; an import waits beyond twice 100 recent rows
    # once the index is trained.
    policy = Policy(exact_max=100, flat_max_bytes=10**9, lists_per_sqrt=1.0, held_delta_max=100)
    with small_disk(data / "index", 1) as index_dir:
        fill(index_dir)
        catalog = Catalog(data, tiny_embedder.model_id, dim, policy)
        manager = ImportManager(ingester(catalog, tiny_embedder), data, batch_rows=100)
        try:
            job = manager.submit(folder)
            assert job.ended.wait(60), "the import waits for the index for good"
            assert job.state == "failed" and "disk is full" in (job.error or ""), job.error
            assert 0 < catalog.store.count() < rows and catalog.index._worker.full is not None
            with catalog.index.hold():  # a new import: the worker tries again at once
                assert catalog.index._worker.full is None
        finally:
            manager.close()
            catalog.close()


def shard(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    paths = [f"/photos/{seed}/{i}.jpg" for i in range(ROWS)]
    folder.mkdir(parents=True)
    write_shard(folder / "a.parquet", table_of(MODEL_ID, DIM, paths, vectors))
    return folder


def call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(daemon.url + path, data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def index_state(daemon: Daemon) -> dict[str, Any]:
    index: dict[str, Any] = call(daemon, "GET", "/stats")[1]["index"]
    return index


@pytest.mark.slow
def test_a_full_disk_is_reported_survived_and_recovered_from(
    tmp_path: Path, tiny_model_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start on a full disk whose saved index is gone: refused where SQLite cannot open,
    else the daemon serves (exact from the store) while its background training fails to
    write, says why, and trains once there is room; writes are refused with 507 meanwhile."""
    for name, value in THRESHOLDS.items():
        monkeypatch.setenv(name, value)
    first, second = shard(tmp_path / "p0", 0), shard(tmp_path / "p1", 1)
    with small_disk(tmp_path / "data", 32) as data:
        daemon = Daemon(data, tiny_model_config)
        try:
            daemon.wait_ready()
            status, job = call(daemon, "POST", "/import", {"dir": str(first), "wait": True})
            assert (status, job["state"], job["imported"]) == (200, "done", ROWS), job
            wait_for("the index trained", lambda: index_state(daemon)["kind"] != "exact", 60)
            daemon.stop(signal.SIGTERM)
            shutil.rmtree(data / "index")  # (its fine codes with it: written again)
            ballast = fill(data)

            daemon = Daemon(data, tiny_model_config)  # no room for SQLite's WAL index
            assert daemon.proc.wait(60) == 2
            assert "disk" in daemon.output() and "free some space" in daemon.output()
            fill(data, leave=256 << 10)  # room for SQLite, none for an index
            daemon = Daemon(data, tiny_model_config)
            daemon.wait_ready()
            status, job = call(daemon, "POST", "/import", {"dir": str(second), "wait": True})
            assert (status, job["state"]) == (200, "failed") and job["imported"] < ROWS, job
            assert "disk is full" in job["error"] and "free some space" in job["error"]
            fill(data)  # not even room for the job's record
            assert call(daemon, "GET", "/stats")[1]["disk_free_mb"] == 0
            status, body = call(daemon, "POST", "/import", {"dir": str(second), "wait": True})
            assert status == 507 and body["status"] == 507 and "disk is full" in body["error"]
            wait_for(
                "the index's error",
                lambda: "disk is full" in (index_state(daemon)["error"] or ""),
                timeout=60,
            )
            assert not list((data / "index").glob("*" + TEMP_SUFFIX))
            probe = {"vector": [1.0] * DIM, "limit": 5}
            status, found = call(daemon, "POST", "/search", probe)
            assert status == 200 and len(found["results"]) == 5
            assert daemon.proc.poll() is None and call(daemon, "GET", "/health")[0] == 200

            ballast.unlink()
            wait_for(
                "the index trained again",
                lambda: (s := index_state(daemon))["error"] is None and s["kind"] != "exact",
                timeout=90,
            )
            status, job = call(daemon, "POST", "/import", {"dir": str(second), "wait": True})
            assert (status, job["state"]) == (200, "done"), job
            assert job["imported"] + job["skipped"] == ROWS, job  # (rows in before: skipped)
            assert call(daemon, "GET", "/stats")[1]["images"] == 2 * ROWS
            wait_for("every row searchable", lambda: index_state(daemon)["vectors"] == 2 * ROWS)
        finally:
            daemon.proc.kill()
            daemon.proc.wait()
