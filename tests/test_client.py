"""The command-line client (`imgsearch add/search/stats/remove/jobs`) against a real daemon."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsearch import cli, client

from .helpers import Daemon, free_port, photo, running
from .helpers import run_cli as run

# Slow lane: a real daemon subprocess; tests/test_cli.py covers the CLI in the fast lane.
pytestmark = pytest.mark.slow
NAMES = ("chelsea", "coffee", "rocket", "astronaut")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: Path) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("client") / "data", tiny_model_config) as d:
        yield d


@pytest.fixture(scope="module")
def pics(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> Path:
    """An indexed folder of real photos."""
    folder = tmp_path_factory.mktemp("pics")
    for name in NAMES:
        photo(name, 160).save(folder / f"{name}.jpg")
    assert daemon.get("/add", image=str(folder))["added"] == len(NAMES)
    return folder


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, daemon: Daemon) -> None:
    monkeypatch.setenv("IMGSEARCH_URL", daemon.url)
    monkeypatch.delenv("IMGSEARCH_TOKEN", raising=False)


def test_stats_text_and_json(capsys: pytest.CaptureFixture[str], pics: Path) -> None:
    code, out, _ = run(capsys, "stats")
    assert code == 0
    assert "model: open_clip/imgsearch-test-tiny/random" in out.splitlines()
    assert re.search(r"^index\.origin: \w+$", out, re.M)
    code, out, _ = run(capsys, "stats", "--json")
    assert code == 0 and json.loads(out)["dim"] == 32


def test_search_table_finds_itself_first_from_a_relative_path(
    capsys: pytest.CaptureFixture[str], pics: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pics.parent)
    code, out, _ = run(capsys, "search", f"{pics.name}/coffee.jpg", "--limit", "3")
    assert code == 0
    header, first, *rest = out.splitlines()
    assert header.split() == ["#", "distance", "image"]
    assert first.split() == ["1", "0.0000", str(pics / "coffee.jpg")]
    assert len(rest) == 2
    code, out, _ = run(capsys, "search", str(pics / "coffee.jpg"), "--json", "--limit", "2")
    results = json.loads(out)["results"]
    assert code == 0 and results[0]["image"] == str(pics / "coffee.jpg") and len(results) == 2


def test_search_text(capsys: pytest.CaptureFixture[str], pics: Path) -> None:
    code, out, _ = run(capsys, "search", "--text", "a cat", "--limit", "4")
    assert code == 0 and len(out.splitlines()) == 5
    assert {line.split()[-1] for line in out.splitlines()[1:]} == {
        str(pics / f"{n}.jpg") for n in NAMES
    }


def test_search_compare_shows_scores_and_verdicts(
    capsys: pytest.CaptureFixture[str], pics: Path
) -> None:
    argv = ["search", str(pics / "rocket.jpg"), "--limit", "2", "--compare", "verify"]
    code, out, _ = run(capsys, *argv, "--compare", "histogram", "--no-rerank")
    assert code == 0
    header, first, _second = out.splitlines()
    assert header.split() == ["#", "distance", "score", "verdict", "image"]
    rank, distance, score, verdict, image = first.split()
    assert (rank, verdict, image) == ("1", "duplicate", str(pics / "rocket.jpg"))
    assert float(score) > 1.0


def test_search_upload_sends_the_bytes(capsys: pytest.CaptureFixture[str], pics: Path) -> None:
    copy = pics.parent / "elsewhere-chelsea.jpg"  # not indexed: only its pixels can match
    copy.write_bytes((pics / "chelsea.jpg").read_bytes())
    code, out, _ = run(capsys, "search", str(copy), "--upload", "--limit", "1", "--json")
    assert code == 0
    [hit] = json.loads(out)["results"]
    assert hit["image"] == str(pics / "chelsea.jpg") and hit["distance"] < 1e-4


def test_remove_a_relative_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    photo("coins", 120).save("coins.jpg")
    assert run(capsys, "add", "coins.jpg")[:2] == (0, "added 1, updated 0, skipped 0, failed 0\n")
    assert run(capsys, "remove", "coins.jpg")[:2] == (0, "removed 1\n")
    assert run(capsys, "remove", "coins.jpg", "--json")[:2] == (0, '{\n  "removed": 0\n}\n')


def test_add_waits_with_a_progress_bar_and_lists_failures(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for i, name in enumerate(("horse", "camera", "coffee")):
        photo(name, 120).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    code, out, err = run(capsys, "add", str(tmp_path))
    assert code == 0  # a bad file is reported, not an error of the command
    summary, failure = out.splitlines()
    assert summary == "added 3, updated 0, skipped 0, failed 1"
    assert failure.startswith(f"  {tmp_path / 'broken.jpg'}: ")
    assert "4/4" in err and "file" in err  # tqdm's bar on stderr
    code, out, _ = run(capsys, "add", str(tmp_path), "--update", "--json")
    job = json.loads(out)
    assert code == 0 and job["state"] == "done" and (job["updated"], job["failed"]) == (3, 1)


def test_add_no_wait_then_jobs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, daemon: Daemon
) -> None:
    photo("hubble_deep_field", 120).save(tmp_path / "sky.jpg")
    code, out, _ = run(capsys, "add", str(tmp_path), "--no-wait")
    job_id = out.strip()
    assert code == 0 and re.fullmatch(r"[\w-]+", job_id)
    job = client.follow(client.Connection(daemon.url), job_id, show_progress=False, poll_s=0)
    assert job["state"] == "done"
    code, out, _ = run(capsys, "jobs")
    header, first, *_ = out.splitlines()
    assert code == 0 and header.split() == ["id", "state", "done/total", "images/s", "image"]
    assert first.split()[:3] == [job_id, "done", "1/1"] and first.endswith(str(tmp_path))
    code, out, _ = run(capsys, "jobs", job_id)
    assert code == 0 and f"id: {job_id}" in out and "added: 1" in out and "state: done" in out
    code, out, _ = run(capsys, "jobs", "--cancel", job_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "done"


def test_add_interrupted_leaves_the_job_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    photo("astronaut", 100).save(tmp_path / "a.jpg")
    monkeypatch.setattr(client, "follow", interrupted)
    code, _, err = run(capsys, "add", str(tmp_path))
    job_id = re.fullmatch(r"still running as job (\S+) \(imgsearch jobs --cancel \1 .*\)\n", err)
    assert code == 130 and job_id


def test_add_of_a_bad_single_file_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    code, out, err = run(capsys, "add", str(tmp_path / "bad.jpg"))
    assert code == 1 and out.startswith("added 0,")
    assert re.search(r"\nerror: job \S+ failed: .*not a recognised image.*\n$", err)


def test_server_errors_exit_1_with_the_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "search", str(tmp_path / "missing.jpg"))
    assert (code, out) == (1, "")
    assert err == f"error: no such file: {tmp_path / 'missing.jpg'} (HTTP 404)\n"
    code, _, err = run(capsys, "jobs", "no-such-job")
    assert code == 1 and err.endswith("(HTTP 404)\n")
    code, _, err = run(capsys, "search", "--text", "x", "--compare", "bogus")
    assert code == 1 and "bogus" in err and "(HTTP 400)" in err


def test_unreachable_daemon_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "stats", "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"cannot reach imgsearch at {url}: is `imgsearch serve` running?")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "search")[0] == 2
    assert run(capsys, "search", "a.jpg", "--text", "cat")[0] == 2
    assert run(capsys, "search", "--text", "cat", "--upload")[0] == 2
    assert run(capsys, "search", "--limit", "many", "a.jpg")[0] == 2
    code, _, err = run(capsys, "search", "/no/such/file.jpg", "--upload")
    assert code == 2 and "cannot read /no/such/file.jpg" in err


def test_token_is_sent_as_a_bearer_header(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b'{"error": "bad token", "status": 401}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, _, err = run(capsys, "stats", "--url", url, "--token", "t0k")
        thread.join()
    assert (code, err, seen) == (1, "error: bad token (HTTP 401)\n", ["Bearer t0k"])


def test_token_auto_reads_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    assert client.read_token("auto", tmp_path) == "s3cret"
    assert client.read_token("given", tmp_path) == "given"
    with pytest.raises(client.UsageError):
        client.read_token("auto", tmp_path / "nowhere")


def test_no_subcommand_or_leading_flags_still_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "serve", lambda args: seen.append(args) or 0)
    for argv in ([], ["--port", "9123"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
    assert seen[0]["port"] is None and seen[1]["port"] == 9123


def test_watch_a_relative_folder_list_and_stop(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("shoebox").mkdir()
    code, out, _ = run(capsys, "watch", "shoebox")
    assert code == 0 and str(tmp_path / "shoebox") in out and out.startswith("state")
    code, out, _ = run(capsys, "watch", "--json")
    assert code == 0
    (entry,) = [w for w in json.loads(out)["watches"] if w["dir"] == str(tmp_path / "shoebox")]
    code, out, _ = run(capsys, "watch", "shoebox", "--stop")
    assert code == 0 and re.search(r"^stopped\s", out, re.M), out
    code, out, _ = run(capsys, "watch")
    assert code == 0 and str(tmp_path / "shoebox") not in out
    code, _, err = run(capsys, "watch", "--stop")
    assert code == 2 and "--stop needs a folder" in err
    code, _, err = run(capsys, "watch", "no-such-folder")
    assert code == 1 and "no such folder" in err
