"""Model lanes: ingest batches side by side while no search waits; a search never waits."""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch.config import Config
from imgsearch.embedders import Embedder, Lanes, lanes_of
from imgsearch.embedders.lanes import lane_count
from imgsearch.search import SearchOptions
from imgsearch.service import Service

from .helpers import PHOTOS, photo

WAIT = 30.0  # a safety net against a hung test, not a timing assertion


def _hold(lanes: Lanes, kind: str, entered: threading.Event, release: threading.Event) -> None:
    with lanes.bulk() if kind == "bulk" else lanes.interactive():
        entered.set()
        release.wait(WAIT)


def _start(lanes: Lanes, kind: str) -> tuple[threading.Thread, threading.Event, threading.Event]:
    entered, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold, args=(lanes, kind, entered, release), daemon=True)
    thread.start()
    return thread, entered, release


def _finish(*calls: tuple[threading.Thread, threading.Event, threading.Event]) -> None:
    """Release every started call and wait for its thread."""
    for t, _, release in calls:
        release.set()
        t.join(WAIT)


def test_lane_count_follows_cores_and_threads() -> None:
    assert lane_count("cpu", 1, cpus=2) == 2
    assert lane_count("cpu", 4, cpus=16) == 4
    assert lane_count("cpu", 8, cpus=2) == 1
    assert lane_count("cuda", 1, cpus=64) == 1


def test_bulk_calls_fill_the_lanes_and_wait_beyond() -> None:
    lanes = Lanes(2)
    first, second, third = (_start(lanes, "bulk") for _ in range(3))
    assert first[1].wait(WAIT) and second[1].wait(WAIT)
    assert not third[1].wait(0.2), "a third bulk call waits for a lane"
    first[2].set()
    assert third[1].wait(WAIT), "...and starts when one is free"
    _finish(first, second, third)


def test_a_search_holds_further_bulk_calls_back_but_never_waits() -> None:
    lanes = Lanes(2)
    bulk = _start(lanes, "bulk")
    assert bulk[1].wait(WAIT)
    search = _start(lanes, "interactive")
    assert search[1].wait(WAIT)
    late = _start(lanes, "bulk")
    assert not late[1].wait(0.2), "no second bulk lane while a search embeds"
    search[2].set()
    assert late[1].wait(WAIT), "the lane opens when the search is done"
    # All lanes busy with bulk calls: a search still goes straight in.
    again = _start(lanes, "interactive")
    assert again[1].wait(WAIT)
    _finish(bulk, search, late, again)


def test_one_bulk_call_always_runs_even_beside_searches() -> None:
    lanes = Lanes(1)
    search = _start(lanes, "interactive")
    assert search[1].wait(WAIT)
    bulk = _start(lanes, "bulk")
    assert bulk[1].wait(WAIT), "an add is never starved by searches"
    _finish(search, bulk)


@pytest.fixture
def service(
    config: Config, tiny_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Service]:
    monkeypatch.setattr(tiny_embedder, "lanes", Lanes(2), raising=False)
    svc = Service(config, embedder=tiny_embedder)
    yield svc
    svc.close()


# Batch size 4, 2 lanes: full batches until what is left fits one batch per lane, then an
# even share per lane (10 files: 4, then 3 and 3; 4 files: 2 and 2, not one batch of 4); with a
# tail batch of 1 (the bundled CNN's), half a lane's share of what is left (4, then 2 of the 6
# left, then 1s; 4 files: four of 1), so no full batch runs alone on one core at the end.
@pytest.mark.parametrize(
    ("count", "tail", "batches"),
    [(10, 0, [3, 3, 4]), (4, 0, [2, 2]), (10, 1, [1, 1, 1, 1, 2, 4]), (4, 1, [1, 1, 1, 1])],
)
def test_an_add_embeds_batches_side_by_side_and_writes_them_all(
    tmp_path: Path,
    service: Service,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    tail: int,
    batches: list[int],
) -> None:
    runtime = getattr(service.embedder, "runtime")  # noqa: B009 (the Embedder protocol has none)
    monkeypatch.setattr(service.embedder, "runtime", dataclasses.replace(runtime, tail_batch=tail))
    files = []
    for i in range(count):
        files.append(tmp_path / "lib" / f"{i}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        photo(PHOTOS[i % len(PHOTOS)], 64).rotate(i * 11).save(files[-1])
    embedder = service.embedder
    real = embedder.embed_prepared
    together = threading.Barrier(2, timeout=WAIT)  # the first two batches must meet
    calls: list[int] = []

    def side_by_side(batch: Sequence[Any]) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) <= 2:
            together.wait()
        out: np.ndarray = real(batch)
        return out

    monkeypatch.setattr(embedder, "embed_prepared", side_by_side)
    report = service.ingester.add(tmp_path / "lib")
    assert (report.added, report.failed) == (count, 0)
    assert sorted(calls) == batches
    assert lanes_of(embedder).lanes == 2
    # Every stored vector is its own file's (no batch written against another's files).
    monkeypatch.setattr(embedder, "embed_prepared", real)
    expected = embedder.embed_images(
        [photo(PHOTOS[i % len(PHOTOS)], 64).rotate(i * 11) for i in range(count)]
    )
    states = service.catalog.store.file_states([str(f) for f in files])
    ids = [states[str(f)].id for f in files]
    sims = [service.catalog.similarities(expected[i], [ids[i]])[ids[i]] for i in range(count)]
    assert min(sims) > 0.99


def test_region_views_are_embedded_in_two_calls_in_order(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    views = [photo(PHOTOS[i % len(PHOTOS)], 96).rotate(i * 5) for i in range(6)]
    embedder = service.embedder
    whole = embedder.embed_images(views)
    real, calls = embedder.embed_images, []

    def counting(images: Sequence[Any]) -> np.ndarray:
        calls.append(len(images))
        out: np.ndarray = real(images)
        return out

    monkeypatch.setattr(embedder, "embed_images", counting)
    split = service.searcher._embed(views)  # lanes 2, compare workers 2: half in the pool
    assert calls == [3, 3]
    assert split.shape == whole.shape
    assert np.allclose(split, whole, atol=1e-5)
    assert np.allclose(service.searcher._embed(views[:1]), whole[:1], atol=1e-5)


def test_a_request_thread_embeds_on_its_threads_after_a_search(
    tmp_path: Path, service: Service
) -> None:
    """FAISS's one search thread is the request thread's only for the search: FAISS and torch
    share one OpenMP runtime, and asyncio's executor reuses the thread, whose next query was
    embedded on 1 torch thread instead of --threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what load_embedder does with --threads 2
    request = ThreadPoolExecutor(1)  # as asyncio's default executor: its threads are reused
    try:
        (tmp_path / "lib").mkdir()
        for name in PHOTOS[:3]:
            photo(name, 64).save(tmp_path / "lib" / f"{name}.jpg")
        assert service.ingester.add(tmp_path / "lib").added == 3
        query = io.BytesIO()
        photo(PHOTOS[0], 64).save(query, "JPEG")

        def search() -> int:
            hits = service.searcher.by_bytes(query.getvalue(), SearchOptions(limit=2))
            assert hits and hits[0].image.endswith(f"{PHOTOS[0]}.jpg")
            return torch.get_num_threads()

        assert [request.submit(search).result() for _ in range(3)] == [2, 2, 2]
    finally:
        request.shutdown()
        torch.set_num_threads(before)
