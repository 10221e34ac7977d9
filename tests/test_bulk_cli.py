"""`imgsearch export` and `imgsearch import` against a real daemon process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
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

    code, out, _ = run(capsys, "import", "exported", "--no-wait", "--json", "--earlier-model")
    assert code == 0 and json.loads(out)["state"] in {"queued", "running", "done"}
    assert json.loads(out)["earlier_model"] is True

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


@pytest.fixture
def shards(daemon: Daemon, tmp_path: Path) -> Path:
    """A folder of the library's shards (two photos of this test's own among them)."""
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("camera", "horse"):
        photo(name, 120).save(pics / f"{name}.jpg")
    assert daemon.get("/add", image=str(pics))["added"] == 2
    assert daemon.get("/export", dir=str(tmp_path / "shards"))["state"] == "done"
    return tmp_path / "shards"


def test_import_and_export_ids_are_jobs_ids(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, shards: Path
) -> None:
    """Before: `imgsearch jobs ID` and `jobs --cancel ID` knew only add jobs (404 for the ids
    `import`/`export --no-wait` print)."""
    code, out, err = run(capsys, "export", str(shards.parent / "again"), "--no-wait")
    export_id = out.strip()
    assert code == 0, err
    wait_for("the export", lambda: daemon.get(f"/export/{export_id}")["state"] == "done")
    code, out, err = run(capsys, "jobs", export_id)
    assert code == 0 and f"id: {export_id}" in out.splitlines(), err
    assert {"kind: export", "state: done", f"dir: {shards.parent / 'again'}"} <= set(
        out.splitlines()
    )
    code, out, err = run(capsys, "import", str(shards), "--no-wait")
    import_id = out.strip()
    code, out, err = run(capsys, "jobs", "--cancel", import_id, "--json")
    job = json.loads(out)
    assert code == 0 and (job["id"], job["kind"]) == (import_id, "import"), err
    assert job["state"] in {"cancelled", "done"}
    code, out, err = run(capsys, "jobs", import_id)
    assert code == 0 and f"state: {job['state']}" in out.splitlines() and "kind: import" in out
    code, _, err = run(capsys, "jobs", "--cancel", "no-such-job")
    assert code == 1 and err.endswith("(HTTP 404)\n") and "no such job" in err


def test_an_import_summary_counts_the_rows_skipped(
    capsys: pytest.CaptureFixture[str], shards: Path
) -> None:
    """Before: `skipped` was left out of the text summary (`imported: 0, failed: 0` for an
    import of rows the library holds already)."""
    code, out, err = run(capsys, "import", str(shards))
    lines = out.splitlines()
    assert code == 0 and lines[:2] == ["state: done", "imported: 0"], err
    assert int(lines[2].removeprefix("skipped: ")) >= 2 and lines[3:] == ["failed: 0"]


def test_a_relative_path_map_is_refused_before_anything_is_read(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, shards: Path
) -> None:
    """Before: accepted, then every row failed (`path must be absolute`) and the command exited
    0."""
    before = daemon.get("/import")["imports"]
    images = daemon.get("/stats")["images"]
    for spec in (f"{shards.parent}/pics=pics2", "pics=/elsewhere"):
        body = json.dumps({"dir": str(shards), "wait": True, "path_map": [spec]}).encode()
        request = urllib.request.Request(
            f"{daemon.url}/import", body, {"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=60)
        error = json.loads(answer.value.read())
        assert (answer.value.code, error["status"]) == (400, 400)
        assert "must be an absolute path or an http(s) URL" in error["error"]
        code, out, err = run(capsys, "import", str(shards), "--path-map", spec)
        assert (code, out) == (2, "") and "must be an absolute path or an http(s) URL" in err
    assert daemon.get("/import")["imports"] == before
    assert daemon.get("/stats")["images"] == images
