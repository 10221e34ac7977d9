"""Saved bases on disk across crashes and restores: a base saved again under its generation
never replaces the one in use before it is whole; a base newer than the database (restored
from a backup) is deleted, never loaded later; a fine-code file no saved base names (a
training a crash or a full disk stopped) is deleted.

Real SQLite, real FAISS, small N (an IVF base from 100 images, nothing compacted unless asked).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgsearch.catalog import DB_FILE, Catalog
from imgsearch.errors import DiskFull
from imgsearch.index import Policy
from imgsearch.index import base as B
from imgsearch.index.fine import tables

from .helpers import agrees, clustered, crashed, put_all, without_worker

DIM = 32
NEVER = 1 << 40
IVF = Policy(exact_max=100, delta_max=NEVER)
EXACT = Policy(exact_max=NEVER, delta_max=NEVER)


def found(catalog: Catalog, vectors: np.ndarray) -> list[int]:
    """Each vector's best hit."""
    return [int(i) for i in catalog.index.search(vectors, 1)[1][:, 0]]


def test_a_base_saved_again_under_its_generation_gets_a_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tuning keeps the base's generation and kind: its save deleted the folder in use
    first, seconds of paced deletion at 10M, then renamed the new one in. Killed between
    the two, the start found no base and trained one for minutes. Now the new base has its
    own folder, the old one goes once the new one is swapped in, and a crash while it goes
    leaves the new one."""
    vectors = clustered(1500)
    catalog = Catalog(tmp_path, "m", DIM, IVF)
    put_all(catalog, vectors)
    catalog.index.rebase()
    first = B.saved(tmp_path / "index")
    crashed(catalog)
    catalog = Catalog(tmp_path, "m", DIM, dataclasses.replace(IVF, target_recall=0.9))
    without_worker(catalog)  # this test runs each job itself

    def killed(path: Path) -> None:  # a kill -9 while the old base is being deleted
        raise SystemExit("killed")

    monkeypatch.setattr(B, "discard", killed)
    with pytest.raises(SystemExit):
        catalog.index.maintain()  # "tune": saved, swapped in, then the old one pruned
    saved = B.saved(tmp_path / "index")
    assert len(first) == 1 and first[0] in saved and len(saved) == 2
    assert saved[0].name == first[0].name + ".000001"  # newest first
    crashed(catalog)
    monkeypatch.undo()
    catalog = Catalog(tmp_path, "m", DIM, dataclasses.replace(IVF, target_recall=0.9))
    assert catalog.index_origin == "loaded"
    assert catalog.index._segments.base.meta.target == pytest.approx(0.9)  # the new one
    agrees(catalog)
    catalog.close()


def test_a_base_newer_than_a_restored_database_is_deleted_not_loaded_later(
    tmp_path: Path,
) -> None:
    """The database restored from a backup, the index folder left: the base is newer and was
    skipped but kept; once the database's generation caught up, a start loaded it, whose
    ids by then named other images."""
    vectors = clustered(40)
    catalog = Catalog(tmp_path, "m", DIM, EXACT)
    put_all(catalog, vectors[:3])
    catalog.close()
    shutil.copy(tmp_path / DB_FILE, tmp_path / "backup")
    catalog = Catalog(tmp_path, "m", DIM, EXACT)
    for i in range(4):
        put_all(catalog, vectors[10 + i : 11 + i], start=10 + i)
    catalog.index.rebase()
    catalog.close()
    shutil.copy(tmp_path / "backup", tmp_path / DB_FILE)  # restored
    for suffix in ("-wal", "-shm"):
        (tmp_path / (DB_FILE + suffix)).unlink(missing_ok=True)
    catalog = Catalog(tmp_path, "m", DIM, EXACT)
    assert not [p for p in B.saved(tmp_path / "index") if "000000000005" in p.name]
    new = [id_ for i in range(4) for id_ in put_all(catalog, vectors[20 + i : 21 + i], 20 + i)]
    catalog.close()
    catalog = Catalog(tmp_path, "m", DIM, EXACT)
    agrees(catalog)
    assert found(catalog, vectors[20:24]) == new
    catalog.close()


def test_fine_codes_no_saved_base_names_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each training writes a new fine-code file (2.5 GB at 10M) before its base is saved: a
    training a crash stopped left its file for good, and one whose base found no room on
    the disk left one at every retry, filling the disk it lacked."""
    vectors = clustered(1500)
    catalog = Catalog(tmp_path, "m", DIM, IVF)
    put_all(catalog, vectors)
    catalog.index.rebase()
    without_worker(catalog)  # this test runs each job itself
    (used,) = tables(tmp_path / "index")

    def no_room(*args: object) -> None:
        raise DiskFull("no room for the base")

    monkeypatch.setattr(B, "room_for", no_room)
    for _ in range(3):
        with pytest.raises(DiskFull):
            catalog.index._replace(catalog.index.train)  # a training whose save fails
    assert tables(tmp_path / "index") == [used]
    stray = used.with_name("fine-0123456789ab.u8")  # as a training a crash stopped leaves it
    stray.write_bytes(bytes(4096))
    crashed(catalog)
    monkeypatch.undo()
    catalog = Catalog(tmp_path, "m", DIM, IVF)
    assert tables(tmp_path / "index") == [used] and catalog.index_origin == "loaded"
    catalog.close()
