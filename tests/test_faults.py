"""Fault injection with real processes: kill -9 an `imgsearch serve` during a long /add.

The daemon saves its index every 50 ms here, so kills land before, between and during saves.
After each kill the database must be intact with no duplicate paths, the saved index (if any)
must load and hold only ids the database has, and a restart must serve images == vectors.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from imgsearch.catalog import DB_FILE, INDEX_FILE, Catalog
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.index import TEMP_SUFFIX, VectorIndex
from imgsearch.search import SearchOptions
from imgsearch.service import Service

from .helpers import Daemon

log = logging.getLogger(__name__)

MODEL_ID = "open_clip/imgsearch-test-tiny/random"
DIM = 32
N_IMAGES = 300
SAVE_INTERVAL = "0.05"
SOURCES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "checkerboard", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
SAME = 1e-3  # distance under which a hit is the query's own picture

pytestmark = pytest.mark.slow


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct small photos (random crop, rotation, size and noise), PNG and JPEG,
    spread over two subfolders."""
    rng = np.random.default_rng(seed)
    sources = []
    for name in SOURCES:
        arr = np.asarray(getattr(skdata, name)())
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        sources.append(Image.fromarray(arr).convert("RGB"))
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = src.size
        side = int(rng.integers(48, min(w, h)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        img = src.crop((x, y, x + side, y + side)).rotate(float(rng.uniform(-40, 40)))
        img = img.resize((int(rng.integers(64, 129)), int(rng.integers(64, 129))))
        noise = rng.integers(-12, 13, size=(img.height, img.width, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
        path = folder / ("even" if i % 2 == 0 else "odd") / f"{i:04d}.{'png' if i % 3 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def procs(tiny_model_config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Daemon]]:
    """Started daemons (saving the index every 50 ms), all killed and reaped at the end."""
    monkeypatch.setenv("IMGSEARCH_INDEX_SAVE_INTERVAL", SAVE_INTERVAL)
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.wait()


def serve(procs: list[Daemon], data_dir: Path, model_config: Path) -> Daemon:
    d = Daemon(data_dir, model_config, "--batch-size", "8", "--workers", "2")
    procs.append(d)
    d.wait_ready()
    return d


class BackgroundAdd:
    """GET /add in a thread; the request is expected to die with the daemon."""

    def __init__(self, daemon: Daemon, folder: Path) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(daemon, folder), daemon=True)
        self._thread.start()

    def _run(self, daemon: Daemon, folder: Path) -> None:
        try:
            self.result = daemon.get("/add", image=str(folder))
        except BaseException as exc:  # noqa: B036 - reported to the test, never lost
            self.error = exc

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()


def kill_when(daemon: Daemon, add: BackgroundAdd, min_images: int) -> int:
    """Poll /stats until `min_images` are stored, then SIGKILL; return the last count seen."""
    seen = 0
    deadline = time.monotonic() + 60
    while seen < min_images and not add.finished and time.monotonic() < deadline:
        seen = daemon.get("/stats")["images"]
        time.sleep(0.005)
    daemon.stop(signal.SIGKILL)
    add.join()
    return seen


def kill_during_save(daemon: Daemon, add: BackgroundAdd, data_dir: Path) -> bool:
    """SIGKILL the moment an index save's temp file appears; return whether one was caught."""
    tmp = data_dir / (INDEX_FILE + TEMP_SUFFIX)
    deadline = time.monotonic() + 5
    caught = False
    while time.monotonic() < deadline and not add.finished:
        if os.path.exists(tmp):
            caught = True
            break
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=30)
    add.join()
    caught = caught and tmp.exists()  # the save was really cut short
    if not caught:
        log.warning("no index save caught in flight; killed after it instead")
    return caught


def db_rows(data_dir: Path) -> list[tuple[int, str]]:
    """Check the database file directly after a crash; return its (id, path) rows."""
    with closing(sqlite3.connect(data_dir / DB_FILE)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        twice = conn.execute(
            "SELECT path, count(*) FROM images GROUP BY path HAVING count(*) > 1"
        ).fetchall()
        assert twice == []
        return [(int(i), str(p)) for i, p in conn.execute("SELECT id, path FROM images")]


def check_after_kill(data_dir: Path, committed: int) -> int:
    """What a kill -9 may leave: committed rows kept, a loadable index no ahead of the db."""
    rows = db_rows(data_dir)
    assert len(rows) >= committed, "rows reported stored before the kill were lost"
    index_file = data_dir / INDEX_FILE
    if index_file.exists():  # a save is atomic: the old file or the new one, whole
        index, stamp = VectorIndex.load(index_file, MODEL_ID, DIM)
        ids = set(index.ids().tolist())
        assert len(ids) == stamp.count
        assert ids <= {i for i, _ in rows}, "the saved index holds ids the database lacks"
    return len(rows)


def check_restart(daemon: Daemon, expected: int) -> None:
    """A restarted daemon serves every stored image, and cleared any half-written save."""
    stats = daemon.get("/stats")
    assert stats["images"] == stats["index"]["vectors"] == expected, stats
    assert not (Path(stats["data_dir"]) / (INDEX_FILE + TEMP_SUFFIX)).exists()


def search_finds_itself(daemon: Daemon, paths: list[Path]) -> None:
    for path in paths:
        hits = daemon.get("/search", image=str(path), limit=3)["results"]
        assert hits[0]["image"] == str(path) and hits[0]["distance"] < SAME, (path, hits)


def test_kill_9_during_add_and_index_saves(
    tmp_path: Path, tiny_model_config: Path, procs: list[Daemon]
) -> None:
    folder = tmp_path / "pics"
    paths = make_images(folder, N_IMAGES)
    data_dir = tmp_path / "data"

    # 1. Early: as soon as the first batches are committed.
    first = serve(procs, data_dir, tiny_model_config)
    add = BackgroundAdd(first, folder)
    seen = kill_when(first, add, 8)
    assert add.error is not None, "the add finished before the early kill"
    stored = check_after_kill(data_dir, seen)

    # 2. Mid-add: a third of the set (the rest of the add is still to do).
    second = serve(procs, data_dir, tiny_model_config)
    check_restart(second, stored)
    add = BackgroundAdd(second, folder)
    seen = kill_when(second, add, N_IMAGES // 3)
    assert add.error is not None, "the add finished before the mid-add kill"
    stored = check_after_kill(data_dir, seen)
    assert stored < N_IMAGES

    # 3. During an index save: the temp file exists, the rename has not happened.
    third = serve(procs, data_dir, tiny_model_config)
    check_restart(third, stored)
    add = BackgroundAdd(third, folder)
    kill_during_save(third, add, data_dir)
    stored = check_after_kill(data_dir, stored)

    # 4. Restart, and the same add completes the set.
    last = serve(procs, data_dir, tiny_model_config)
    check_restart(last, stored)
    report = last.get("/add", image=str(folder))
    assert report["failed"] == 0, report["errors"]
    # What was committed before the kills is kept; only what was not is embedded again.
    assert (report["skipped"], report["added"], report["updated"]) == (stored, N_IMAGES - stored, 0)
    check_restart(last, N_IMAGES)
    search_finds_itself(last, paths[:: N_IMAGES // 6])
    assert last.stop(signal.SIGTERM) < 10 and last.proc.returncode == 0

    assert sorted(p for _, p in db_rows(data_dir)) == sorted(str(p) for p in paths)
    catalog = Catalog(data_dir, MODEL_ID, DIM)
    try:
        assert catalog.index_origin == "loaded"
        assert sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()
        assert len(catalog.index) == N_IMAGES
    finally:
        catalog.close()


def test_stray_temp_file_and_older_index_copy(
    tmp_path: Path,
    tiny_model_config: Path,
    procs: list[Daemon],
    config: Config,
    tiny_embedder: Embedder,
) -> None:
    """Build the data dir in-process (cheaper than one more daemon start), keep an older copy
    of its index, then check a daemon started on it answers as the untouched data did."""
    folder = tmp_path / "pics"
    paths = make_images(folder, 40, seed=1)
    data_dir = config.data_dir
    index_file = data_dir / INDEX_FILE

    service = Service(config, tiny_embedder)
    try:
        assert service.ingester.add(folder / "even").added == 20
        assert service.catalog.save()
        older = index_file.read_bytes()  # holds the even half only
        assert service.ingester.add(folder / "odd").added == 20
        gone = paths[0:6:2]  # three of the even ones
        for path in gone:
            assert service.remove(path) == 1
        changed = paths[8]  # an even one, new content under the same id
        with Image.open(paths[1]) as other:
            other.convert("RGB").rotate(90).save(changed, format="PNG")
        assert service.ingester.add(changed).updated == 1
        queries = paths[::5] + [changed]
        options = SearchOptions(limit=5)
        before = [[h.as_json() for h in service.searcher.by_path(p, options)] for p in queries]
    finally:
        service.close()

    index_file.write_bytes(older)
    stray = data_dir / (INDEX_FILE + TEMP_SUFFIX)
    stray.write_bytes(b"IMGSEARCH-FAISS 1\n" + os.urandom(4096))  # a save cut short

    daemon = serve(procs, data_dir, tiny_model_config)
    stats = daemon.get("/stats")
    assert stats["images"] == stats["index"]["vectors"] == 37, stats
    assert stats["index"]["origin"] in {"caught-up", "rebuilt"}
    assert not stray.exists()
    after = [daemon.get("/search", image=str(p), limit=5)["results"] for p in queries]
    for got, want in zip(after, before, strict=True):  # the same answers as before
        assert [h["image"] for h in got] == [h["image"] for h in want]
        dist = [h["distance"] for h in got], [h["distance"] for h in want]
        np.testing.assert_allclose(*dist, atol=1e-4)
    assert not {str(p) for p in gone} & {h["image"] for hits in after for h in hits}
    assert after[-1][0]["image"] == str(changed) and after[-1][0]["distance"] < SAME
    assert daemon.stop(signal.SIGTERM) < 10 and daemon.proc.returncode == 0
    catalog = Catalog(data_dir, MODEL_ID, DIM)
    try:  # the daemon saved the repaired index
        assert catalog.index_origin == "loaded"
        assert sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()
    finally:
        catalog.close()
