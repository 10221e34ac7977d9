"""Freed heap memory is handed back to the system (memory.trim), as the daemon does after bulk
work: real glibc allocations, real resident sizes from /proc."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch import memory
from imgsearch.catalog import Catalog
from imgsearch.index import Policy, manager
from imgsearch.store import FileFacts, NewImage

BLOCK = 64 * 1024  # under glibc's mmap threshold: these come from an arena's heap
BLOCKS = 4096  # 256 MB
DIM = 16


@pytest.mark.skipif(
    sys.platform != "linux" or memory._malloc_trim() is None, reason="glibc's malloc_trim"
)
def test_memory_a_thread_freed_in_the_middle_of_its_heap_is_returned() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    kept: list[int] = []

    def allocate() -> None:  # on its own thread, so in its own arena, as the import's threads
        blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)
        for block in blocks[:-1]:  # the last one stays: the heap's top is in use, so free()
            libc.free(block)  # cannot shrink it; 256 MB lie free below it
        kept.append(blocks[-1])

    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
    try:
        held = memory.rss_mb()
        freed = memory.trim("test")
        assert freed > 0.75 * BLOCK * BLOCKS / 2**20, (held, freed)
        assert memory.rss_mb() < held - 0.75 * BLOCK * BLOCKS / 2**20
        assert memory.trim("again") < 16  # nothing more to return
    finally:
        libc.free(kept[0])


def test_memory_rss_is_read_from_proc(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t 9000 kB\nVmRSS:\t 2048 kB\n")
    assert memory.rss_mb(status) == 2.0
    assert memory.rss_mb(tmp_path / "missing") == 0.0


def test_memory_the_index_worker_trims_after_its_jobs_not_while_an_import_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[tuple[str, int]] = []
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, settle_min=100))
    index = catalog.index
    monkeypatch.setattr(manager, "trim", lambda why: trims.append((why, index._holds)) or 0.0)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    try:
        with index.hold(expected=3000):
            catalog.put(
                [NewImage(FileFacts(f"/v/{i}.jpg", 1, 1, f"h{i}", 1, 1), v)
                 for i, v in enumerate(vectors)]
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while index.describe()["kind"] == "exact":  # the worker trains, held
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert trims == [], "a trim while the import ran"
        deadline = time.monotonic() + 60
        # the import's end: the worker's full tuning, then a trim (the training's own trim
        # may come first, where its job ended just after the hold: no import ran then)
        while ("index tune", 0) not in trims:
            assert time.monotonic() < deadline, (index.describe(), trims)
            time.sleep(0.05)
        assert set(trims) <= {("index train", 0), ("index tune", 0)}, trims
    finally:
        catalog.close()
