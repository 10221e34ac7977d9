"""The ingest core: change detection, one hash per file, moves, restores, embedded rows, file
names that are not text."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.service import Service
from imgsearch.store import FileFacts, NewImage

from .helpers import PHOTOS, photo


@pytest.fixture
def service(config: Config, tiny_embedder: Embedder) -> Iterator[Service]:
    svc = Service(config, embedder=tiny_embedder)
    yield svc
    svc.close()


def _folder(root: Path, count: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(root / f"{i}.jpg")
        photo(PHOTOS[i % len(PHOTOS)], 64).rotate(i * 7).save(paths[-1])
    return paths


def _embedded(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images the real embedder embeds from now on."""
    counts: list[int] = []
    real = service.embedder.embed_prepared

    def counting(tensors: Any) -> Any:
        counts.append(len(tensors))
        return real(tensors)

    monkeypatch.setattr(service.embedder, "embed_prepared", counting)
    return counts


def test_an_add_follows_a_move_hashing_each_file_once(
    tmp_path: Path, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = _folder(tmp_path / "lib", 3)
    service.ingester.add(tmp_path / "lib")
    before = service.catalog.store.file_states([str(a)])[str(a)]
    moved = tmp_path / "lib" / "renamed.jpg"
    a.rename(moved)
    photo(PHOTOS[5], 64).save(tmp_path / "lib" / "new.jpg")
    embedded = _embedded(service, monkeypatch)
    hashed: list[int] = []
    real_sha256 = hashlib.sha256

    def counting_sha256(data: bytes = b"") -> Any:
        hashed.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)

    report = service.ingester.add(tmp_path / "lib")
    assert (report.added, report.moved, report.skipped, report.failed) == (1, 1, 2, 0)
    assert len(hashed) == 2, "each new file is hashed once, unchanged ones never"
    assert sum(embedded) == 1, "the moved file keeps its vector: only new.jpg is embedded"
    states = service.catalog.store.file_states([str(a), str(moved)])
    assert list(states) == [str(moved)] and states[str(moved)].id == before.id
    assert report.as_json()["updated"] == 1  # the move updated the row's path
    assert len(service.catalog.index) == service.catalog.store.count() == 4


def test_unchanged_images_of_a_returned_folder_are_restored_not_embedded(
    tmp_path: Path, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _folder(tmp_path / "disk", 3)
    service.ingester.add(tmp_path / "disk")
    assert len(service.catalog.mark_missing(str(tmp_path / "disk"))) == 3
    embedded = _embedded(service, monkeypatch)
    report = service.ingester.add_files(files, label="back", progress_bar=False)
    assert (report.skipped, report.restored, sum(embedded)) == (3, 3, 0)
    assert service.catalog.store.missing() == 0 and len(service.catalog.index) == 3


def _row(path: Path, seed: int, mtime_ns: int = 1_000) -> NewImage:
    v = np.random.default_rng(seed).standard_normal(32).astype(np.float32)
    facts = FileFacts(str(path), 100 + seed, mtime_ns, f"sha-{seed}", 64, 48)
    return NewImage(facts, v / np.linalg.norm(v))


def test_embedded_rows_skip_unchanged_update_changed_and_follow_moves(
    tmp_path: Path, service: Service
) -> None:
    ingester = service.ingester
    rows = [_row(tmp_path / f"{i}.jpg", i) for i in range(5)]
    first = ingester.add_embedded(rows)
    assert (first.added, first.updated, first.skipped) == (5, 0, 0)
    ids = service.catalog.store.file_states([r.facts.path for r in rows])

    again = ingester.add_embedded([*rows[:3], _row(tmp_path / "3.jpg", 3, mtime_ns=2_000)])
    assert (again.added, again.updated, again.skipped) == (0, 1, 3)
    forced = ingester.add_embedded(rows[:1], update=True)
    assert (forced.updated, forced.skipped) == (1, 0)

    # 4.jpg's file is gone (it never existed here): a new path with its hash takes its row.
    moved = ingester.add_embedded([_row(tmp_path / "elsewhere" / "4.jpg", 4)])
    assert (moved.added, moved.moved) == (0, 1)
    after = service.catalog.store.file_states([str(tmp_path / "elsewhere" / "4.jpg")])
    assert after[str(tmp_path / "elsewhere" / "4.jpg")].id == ids[rows[4].facts.path].id
    (hits,) = service.catalog.nearest(rows[2].vector[None, :], 1)
    assert hits[0].path == rows[2].facts.path and hits[0].similarity > 0.999
    assert len(service.catalog.index) == service.catalog.store.count() == 5


def test_embedded_rows_with_unusable_vectors_fail_alone(tmp_path: Path, service: Service) -> None:
    good = _row(tmp_path / "good.jpg", 1)
    bad = [
        NewImage(_row(tmp_path / "short.jpg", 2).facts, np.ones(8, dtype=np.float32)),
        NewImage(_row(tmp_path / "nan.jpg", 3).facts, np.full(32, np.nan, dtype=np.float32)),
        NewImage(_row(tmp_path / "zero.jpg", 4).facts, np.zeros(32, dtype=np.float32)),
        NewImage(FileFacts("relative.jpg", 1, 1, "h", 1, 1), good.vector),
    ]
    scaled = NewImage(_row(tmp_path / "scaled.jpg", 5).facts, _row(tmp_path, 5).vector * 7)
    report = service.ingester.add_embedded([*bad, good, scaled])
    assert (report.added, report.failed) == (2, 4)
    assert [e.status for e in report.errors] == [422, 422, 422, 400]
    assert len(service.catalog.index) == service.catalog.store.count() == 2
    (hits,) = service.catalog.nearest(scaled.vector[None, :] / 7, 1)
    assert hits[0].path.endswith("scaled.jpg") and abs(hits[0].similarity - 1) < 1e-5


def test_a_file_name_that_is_not_utf8_fails_alone(tmp_path: Path, service: Service) -> None:
    """A Latin-1 name from an old archive reads as lone surrogates, which SQLite cannot
    bind: the whole batch failed with it (and a watched folder never finished syncing)."""
    files = _folder(tmp_path / "old", 2)
    odd = Path(os.fsdecode(bytes(tmp_path / "old") + b"/caf\xe9.jpg"))
    files[0].rename(odd)
    report = service.ingester.add(tmp_path / "old")
    assert (report.added, report.failed) == (1, 1)
    (error,) = report.as_json()["errors"]
    assert error["status"] == 422 and error["image"].endswith("caf\\xe9.jpg")
    assert "not valid UTF-8" in error["error"]


def test_a_move_whose_old_row_went_meanwhile_adds_the_file(
    tmp_path: Path, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following a move, the old row was looked up, then removed by another writer (a
    watch's prune) before the move: the move changed nothing, yet the file counted as
    moved and was never written."""
    (file,) = _folder(tmp_path / "a", 1)
    service.ingester.add(tmp_path / "a")
    (tmp_path / "b").mkdir()
    moved = file.rename(tmp_path / "b" / file.name)
    catalog = service.catalog
    move = catalog.move

    def pruned_first(image_id: int, *args: Any) -> int | None:
        catalog.remove_ids([image_id])
        return move(image_id, *args)

    monkeypatch.setattr(catalog, "move", pruned_first)
    report = service.ingester.add(tmp_path / "b")
    assert (report.added, report.moved) == (1, 0)
    assert list(catalog.store.file_states([str(moved)])) == [str(moved)]
    assert len(catalog.index) == catalog.store.count() == 1


def test_rows_whose_paths_are_urls_never_take_each_others_rows(
    tmp_path: Path, service: Service
) -> None:
    """A URL never "went" as a file does: a second URL of the same bytes took the first
    one's row whenever the two came in different batches."""
    first, second = _row(tmp_path / "x", 1), _row(tmp_path / "x", 1)
    rows = [
        NewImage(dataclasses.replace(first.facts, path="https://one.example/a.jpg"), first.vector),
        NewImage(
            dataclasses.replace(second.facts, path="https://two.example/a.jpg"), second.vector
        ),
    ]
    for row in rows:
        assert service.ingester.add_embedded([row]).added == 1
    assert service.catalog.store.count() == 2


def test_a_download_never_takes_over_an_image_whose_file_went(
    tmp_path: Path, service: Service
) -> None:
    """A downloaded file (one with a source URL) of the bytes of a stored image whose own file
    is gone took over that image as a "move": the URL was not recorded as its source, and the
    local image was lost."""
    (file,) = _folder(tmp_path / "pics", 1)
    service.ingester.add(tmp_path / "pics")
    download = tmp_path / "downloads" / "a.jpg"
    download.parent.mkdir()
    download.write_bytes(file.read_bytes())
    file.unlink()
    url = "https://example.com/a.jpg"
    report = service.ingester.add_files([download], label=url, sources={str(download): url})
    assert (report.added, report.moved) == (1, 0)
    states = service.catalog.store.file_states([str(file), str(download)])
    assert set(states) == {str(file), str(download)}
    assert service.catalog.store.metadata.ids_by_source([url]) == {url: [states[str(download)].id]}
