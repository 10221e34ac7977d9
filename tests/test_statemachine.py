"""A Hypothesis state machine over one Service: add, remove, overwrite, delete, restart, search.

After every step the FAISS index must hold exactly the database's ids, the database must hold
each path once, and the set of indexed paths must be what the model of the machine expects.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from contextlib import closing
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from imgsearch.catalog import DB_FILE
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import ImgSearchError
from imgsearch.search import SearchOptions
from imgsearch.service import Service

from .helpers import PHOTOS, TINY_MODEL, jpeg_bytes, photo

FOLDERS = ("left", "right")
# The same names in both folders: a file's identity is its whole path, not its name.
FILES = tuple(f"{folder}/{name}" for folder in FOLDERS for name in ("a.jpg", "b.jpg", "c.jpg"))
CONTENTS = len(PHOTOS)  # 8 photos for 6 files, so an overwrite can bring new content
SAME = 1e-3  # distance under which a hit is the query's own picture


@cache
def content(number: int) -> bytes:
    """JPEG bytes of the `number`th sample photo, small so a step stays quick."""
    return jpeg_bytes(photo(PHOTOS[number], size=72), quality=90)


class CatalogMachine(RuleBasedStateMachine):
    """Drives a Service on a temp data dir and tracks what should be indexed."""

    embedder: Embedder  # set by the test (a session fixture)

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="imgsearch-sm-")).resolve()
        for folder in FOLDERS:
            (self.root / folder).mkdir()
        self.config = Config(
            data_dir=self.root / "data",
            model=TINY_MODEL,
            pretrained=None,
            batch_size=4,
            workers=1,
        ).resolved()
        # What is on disk (file -> (content, write number)) and what the store should hold.
        self.disk: dict[str, tuple[int, int]] = {}
        self.indexed: dict[str, tuple[int, int]] = {}
        self.rows: dict[str, int] = {}  # indexed file -> when its row was made (ids grow)
        self.serial = 0
        self.writes = 0
        for number, name in enumerate(FILES):
            self._write(name, number)
        self.service = Service(self.config, self.embedder)

    def teardown(self) -> None:
        self.service.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.root / name

    def _write(self, name: str, number: int) -> None:
        self.writes += 1
        self._path(name).write_bytes(content(number))
        self.disk[name] = (number, self.writes)

    def _expected_add(self, names: list[str]) -> dict[str, int]:
        """What an add of these files on disk should report, and update the model to match.

        A new file with the content of an indexed file deleted from disk is a move: it takes
        over that row (the oldest such), and the deleted file is no longer indexed."""
        counts = {"added": 0, "updated": 0, "skipped": 0, "moved": 0}
        for name in names:
            gone = [
                n
                for n in self.indexed
                if n not in self.disk and self.indexed[n][0] == self.disk[name][0]
            ]
            if name not in self.indexed and gone:
                old = min(gone, key=self.rows.__getitem__)
                del self.indexed[old]
                self.rows[name] = self.rows.pop(old)
                counts["moved"] += 1
            elif name not in self.indexed:
                counts["added"] += 1
                self.serial += 1
                self.rows[name] = self.serial
            elif self.indexed[name] == self.disk[name]:
                counts["skipped"] += 1
            else:
                counts["updated"] += 1
            self.indexed[name] = self.disk[name]
        return counts

    def _add(self, target: Path, names: list[str]) -> None:
        expected = self._expected_add(names)
        report = self.service.ingester.add(target)
        got = {
            "added": report.added,
            "updated": report.updated,
            "skipped": report.skipped,
            "moved": report.moved,
        }
        assert got == expected, (target, report.errors)
        assert report.failed == 0, report.errors

    # -- rules --------------------------------------------------------------------------------

    @rule(name=st.sampled_from(FILES))
    def add_file(self, name: str) -> None:
        if name not in self.disk:
            try:
                self.service.ingester.add(self._path(name))
            except ImgSearchError as exc:
                assert exc.status == 404, exc.message
            else:
                raise AssertionError(f"adding the deleted {name} did not fail")
            return
        self._add(self._path(name), [name])

    @rule(folder=st.sampled_from(FOLDERS))
    def add_folder(self, folder: str) -> None:
        names = sorted(n for n in self.disk if n.startswith(folder + "/"))
        self._add(self.root / folder, names)

    @rule(name=st.sampled_from(FILES))
    def remove_file(self, name: str) -> None:
        expected = 1 if self.indexed.pop(name, None) is not None else 0
        self.rows.pop(name, None)
        assert self.service.remove(self._path(name)) == expected

    @rule(folder=st.sampled_from(FOLDERS))
    def remove_folder(self, folder: str) -> None:
        gone = [n for n in self.indexed if n.startswith(folder + "/")]
        for name in gone:
            del self.indexed[name]
            del self.rows[name]
        assert self.service.remove(self.root / folder) == len(gone)

    @rule(name=st.sampled_from(FILES), number=st.integers(0, CONTENTS - 1))
    def overwrite_then_add(self, name: str, number: int) -> None:
        if name in self.disk and self.disk[name][0] == number:
            number = (number + 1) % CONTENTS  # always new content
        self._write(name, number)
        self._add(self._path(name), [name])  # an update, an add, or a move of a deleted file

    @precondition(lambda self: bool(self.disk))
    @rule(data=st.data())
    def delete_from_disk(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.disk)))
        self._path(name).unlink()
        del self.disk[name]
        self.search()  # searching must not trip over the missing file

    @rule()
    def restart(self) -> None:
        self.service.close()
        self.service = Service(self.config, self.embedder)
        stats = self.service.stats()
        assert stats["images"] == stats["index"]["vectors"] == len(self.indexed)

    @rule()
    def search(self) -> None:
        limit = max(1, len(self.indexed))
        for name in FILES:
            path = self._path(name)
            if name not in self.disk:
                try:
                    self.service.searcher.by_path(path, SearchOptions(limit=limit))
                except ImgSearchError as exc:
                    assert exc.status == 404, exc.message
                else:
                    raise AssertionError(f"searching the deleted {name} did not fail")
                continue
            hits = self.service.searcher.by_path(path, SearchOptions(limit=limit))
            found = {h.image for h in hits}
            assert found <= {str(self._path(n)) for n in self.indexed}, "a removed image came back"
            if self.indexed.get(name) != self.disk[name]:
                continue  # not indexed, or indexed with older content
            # Another file may hold the same picture (an overwrite can copy one): any tie will do.
            assert hits[0].distance < SAME, (name, hits[0])
            assert str(path) in {h.image for h in hits if h.distance < SAME}, (name, hits)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def index_matches_database(self) -> None:
        catalog = self.service.catalog
        index_ids = sorted(catalog.index.ids().tolist())
        assert index_ids == catalog.store.ids().tolist()
        assert catalog.store.count() == len(catalog.index) == len(self.indexed)
        db = self.config.data_dir / DB_FILE
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            twice = conn.execute(
                "SELECT path, count(*) FROM images GROUP BY path HAVING count(*) > 1"
            ).fetchall()
            paths = sorted(row[0] for row in conn.execute("SELECT path FROM images"))
        assert twice == []
        assert paths == sorted(str(self._path(n)) for n in self.indexed)


@pytest.mark.slow
def test_index_matches_database_after_every_step(tiny_embedder: Embedder) -> None:
    machine = type("BoundCatalogMachine", (CatalogMachine,), {"embedder": tiny_embedder})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
