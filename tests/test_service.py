"""Service start-up and shutdown: a failure part-way unwinds everything already opened."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imgsearch import service as service_module
from imgsearch.catalog import DB_FILE, Catalog
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import ConfigError
from imgsearch.service import DataDirLock, Service

from .helpers import unprivileged


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return fds


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fails", ["ComparatorRegistry", "JobManager", "Watcher"])
def test_a_failure_mid_start_releases_the_lock_and_closes_the_database(
    fails: str, config: Config, tiny_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    Service(config, embedder=tiny_embedder).close()  # the data dir exists, with its database
    catalogs: list[Catalog] = []
    real_catalog = service_module.Catalog

    def recording_catalog(*args: Any) -> Catalog:
        catalogs.append(real_catalog(*args))
        return catalogs[-1]

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise _Boom(f"{fails} failed")

    monkeypatch.setattr(service_module, "Catalog", recording_catalog)
    if fails == "ComparatorRegistry":  # after the catalog, before the searcher and jobs
        monkeypatch.setattr(service_module.ComparatorRegistry, "from_entry_points", boom)
    elif fails == "JobManager":  # after the searcher's pool
        monkeypatch.setattr(service_module, "JobManager", boom)
    else:  # the last part: everything else is open
        monkeypatch.setattr(service_module.Watcher, "start", boom)
    threads = set(threading.enumerate())
    fds = _open_fds()

    with pytest.raises(_Boom):
        Service(config, embedder=tiny_embedder)

    (catalog,) = catalogs
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        catalog.store.db.reader().execute("SELECT 1")
    database = str(config.data_dir / "imgsearch.sqlite3")
    assert not {fd for fd in _open_fds() - fds if fd.startswith(database)}, "db left open"
    lock_file = str(config.data_dir / "imgsearch.lock")
    assert lock_file not in _open_fds() - fds, "the lock's descriptor leaked"
    DataDirLock(config.data_dir).release()  # the lock is free again
    started = [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not started, f"threads left running: {started}"
    monkeypatch.undo()
    Service(config, embedder=tiny_embedder).close()  # and the data dir opens as usual


def test_close_is_once_only_and_releases_the_lock(config: Config, tiny_embedder: Embedder) -> None:
    svc = Service(config, embedder=tiny_embedder)
    svc.close()
    svc.close()
    DataDirLock(config.data_dir).release()


def test_the_data_dir_lock_refuses_a_second_daemon(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    try:
        with pytest.raises(Exception, match="another imgsearch daemon"):
            DataDirLock(tmp_path)
    finally:
        lock.release()


def test_the_catalog_opens_while_the_model_loads(
    config: Config, tiny_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    Service(config, embedder=tiny_embedder).close()  # the data dir is bound to the model
    opened_on: list[str] = []
    real_catalog = service_module.Catalog

    def recording_catalog(*args: Any) -> Catalog:
        opened_on.append(threading.current_thread().name)
        return real_catalog(*args)

    def loading(_: Config, **__: Any) -> Embedder:
        deadline = time.monotonic() + 30
        while not opened_on:  # the model "loads" until the catalog has started opening
            assert time.monotonic() < deadline, "the catalog did not open alongside"
            time.sleep(0.01)
        return tiny_embedder

    monkeypatch.setattr(service_module, "Catalog", recording_catalog)
    monkeypatch.setattr(service_module, "load_embedder", loading)
    # (the shared embedder's precision stays as it is; tests/test_speed.py checks the check)
    monkeypatch.setattr(service_module, "check_precision", lambda *_: None)
    svc = Service(config)
    try:
        assert len(opened_on) == 1 and opened_on[0].startswith("open-catalog")
        assert (svc.catalog.model_id, svc.catalog.dim) == (
            tiny_embedder.model_id,
            tiny_embedder.dim,
        )
    finally:
        svc.close()


class _Renamed:
    """The tiny model under another name (a data dir bound to one model, started with another)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.model_id, self.dim = inner, "other/model", inner.dim

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_another_model_is_refused_after_the_early_open_and_nothing_leaks(
    config: Config, tiny_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    Service(config, embedder=tiny_embedder).close()
    monkeypatch.setattr(service_module, "load_embedder", lambda *_, **__: _Renamed(tiny_embedder))
    threads, fds = set(threading.enumerate()), _open_fds()
    with pytest.raises(ConfigError, match="other/model"):
        Service(config)
    assert not [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not {fd for fd in _open_fds() - fds if fd.startswith(str(config.data_dir))}
    monkeypatch.undo()
    Service(config, embedder=tiny_embedder).close()  # the data dir opens as usual


def test_a_model_that_fails_to_load_closes_the_early_catalog(
    config: Config, tiny_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    Service(config, embedder=tiny_embedder).close()
    monkeypatch.setattr(service_module, "load_embedder", _raise_boom)
    threads, fds = set(threading.enumerate()), _open_fds()
    with pytest.raises(_Boom):
        Service(config)
    assert not [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not {fd for fd in _open_fds() - fds if fd.startswith(str(config.data_dir))}


def _raise_boom(_: Config, **__: Any) -> Embedder:
    raise _Boom("no model")


READ_ONLY_DATABASE = """
import json, sys
from pathlib import Path
from imgsearch.catalog import Catalog
from imgsearch.errors import ConfigError
try:
    Catalog(Path(sys.argv[1]), "m/test", 8).close()
    print(json.dumps("opened"))
except ConfigError as exc:
    print(json.dumps(exc.message))
"""


def test_a_database_this_user_cannot_write_is_one_clear_message(tmp_path: Path) -> None:
    """SQLite opened it read-only without a word, and the first write at start failed with
    a traceback ("attempt to write a readonly database")."""
    data = tmp_path / "data"
    data.mkdir()
    Catalog(data, "m/test", 8).close()
    db = data / DB_FILE
    db.chmod(0o444)
    try:
        said = unprivileged(READ_ONLY_DATABASE, str(data))
    finally:
        db.chmod(0o644)
    assert "cannot be written" in said and str(db) in said, said
    assert unprivileged(READ_ONLY_DATABASE, str(data)) == "opened"
