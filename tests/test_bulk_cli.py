"""`imgsearch export` and `imgsearch import` against a real daemon process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Daemon, photo, running, wait_for
from .helpers import run_cli as run

# A real daemon subprocess: the full lane only.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: Path) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("bulk") / "data", tiny_model_config) as d:
        yield d


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, daemon: Daemon) -> None:
    monkeypatch.setenv("IMGSEARCH_URL", daemon.url)
    monkeypatch.delenv("IMGSEARCH_TOKEN", raising=False)


def test_export_then_import_with_a_path_map(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path, monkeypatch: Any
) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        photo(name, 160).save(pics / f"{name}.jpg")
    assert daemon.get("/add", image=str(pics))["added"] == 3
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "export", "exported")  # relative: made absolute here
    assert code == 0 and "rows: 3" in out
    assert (tmp_path / "exported" / "part-00000.parquet").is_file()

    code, out, _ = run(capsys, "import", "exported", "--path-map", f"{pics}=/elsewhere/pics")
    assert code == 0, out
    assert "state: done" in out and "imported: 3" in out
    assert daemon.get("/stats")["images"] == 6  # the same vectors under the mapped paths
    hits = daemon.get("/search", image=str(pics / "coffee.jpg"), limit=2)["results"]
    assert {h["image"] for h in hits} == {str(pics / "coffee.jpg"), "/elsewhere/pics/coffee.jpg"}

    code, out, _ = run(capsys, "import", "exported", "--no-wait", "--json")
    assert code == 0 and json.loads(out)["state"] in {"queued", "running", "done"}

    code, out, _ = run(capsys, "export", "again", "--no-wait")  # the job's id
    job = daemon.get(f"/export/{out.strip()}")
    assert code == 0 and job["dir"] == str(tmp_path / "again")
    wait_for("the export", lambda: daemon.get(f"/export/{job['id']}")["state"] == "done")
    assert daemon.get(f"/export/{job['id']}")["rows"] == 6


def test_import_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "import", str(tmp_path / "missing"))
    assert code == 1 and "no such folder" in err and "HTTP 404" in err
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "export", str(tmp_path))
    assert code == 1 and "not an empty folder" in err and "HTTP 409" in err
