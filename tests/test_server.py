"""A real `imgsearch serve` process on an ephemeral port: start-up, shutdown, restart, lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from imgsearch.cli import bind
from imgsearch.errors import ConfigError

from .helpers import STARTUP_TIMEOUT, Daemon, photo, start, wait_for

# Slow lane: real `imgsearch serve` subprocesses (make test runs it; make test-fast does not).
pytestmark = pytest.mark.slow


def test_serve_add_search_sigterm_and_restart(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon]
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        photo(name).save(folder / f"{name}.jpg")
    data_dir = tmp_path / "data"

    first = start(daemons, data_dir, tiny_model_config)
    first.wait_ready()
    assert first.get("/add", image=str(folder))["added"] == 3
    hits = first.get("/search", image=str(folder / "coffee.jpg"), limit=2)["results"]
    assert hits[0]["image"] == str(folder / "coffee.jpg")
    first.stop(signal.SIGTERM)
    assert first.proc.returncode == 0

    second = start(daemons, data_dir, tiny_model_config)
    second.wait_ready()
    stats = second.get("/stats")
    assert stats["images"] == stats["index"]["vectors"] == 3
    hits = second.get("/search", image=str(folder / "rocket.jpg"), limit=1)["results"]
    assert hits[0]["image"] == str(folder / "rocket.jpg")
    second.stop(signal.SIGINT)
    assert second.proc.returncode == 0


# `python -c SLOW_START MARKER serve ...`: the daemon, whose service takes ten minutes to open
# (as a rebuild of a big index from SQLite can), MARKER created when it begins.
SLOW_START = """
import pathlib, runpy, sys, time
from imgsearch.service import Service
marker, opening = pathlib.Path(sys.argv.pop(1)), Service.__init__
def slowly(*args, **kwargs):
    marker.touch()
    time.sleep(600)
    opening(*args, **kwargs)
Service.__init__ = slowly
runpy.run_module("imgsearch", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_exits_at_once(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon], sig: signal.Signals
) -> None:
    """A SIGTERM while the service opens waited for all of it (and opened it to close it)."""
    marker = tmp_path / "opening"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    daemon = Daemon(data_dir, tiny_model_config, launch=("-c", SLOW_START, str(marker)))
    daemons.append(daemon)
    wait_for("the service to begin opening", marker.exists, STARTUP_TIMEOUT)
    daemon.stop(sig)  # (killed, and the test failed, if still there after STOP_TIMEOUT)
    assert daemon.proc.returncode == 0
    assert f"{sig.name} during start-up: exiting now" in daemon.output()


def test_second_daemon_on_same_data_dir_exits(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon]
) -> None:
    first = start(daemons, tmp_path / "data", tiny_model_config)
    first.wait_ready()
    second = start(daemons, tmp_path / "data", tiny_model_config)
    assert second.proc.wait(timeout=STARTUP_TIMEOUT) == 2
    assert "another imgsearch daemon" in second.output()
    assert first.get("/health") == {"ok": True}


def test_kill_9_then_restart_catches_up(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon]
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        photo(name).save(folder / f"{name}.png")
    first = start(daemons, tmp_path / "data", tiny_model_config)
    first.wait_ready()
    assert first.get("/add", image=str(folder))["added"] == 2
    first.stop(signal.SIGKILL)  # no chance to save the index

    second = start(daemons, tmp_path / "data", tiny_model_config)
    second.wait_ready()
    stats = second.get("/stats")
    assert stats["images"] == stats["index"]["vectors"] == 2
    assert stats["index"]["origin"] in {"rebuilt", "replayed"}
    assert second.get("/add", image=str(folder))["skipped"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"], "--checkpoint"),
        (["--model", "no-such-model"], "unknown open_clip model"),
        (["--checkpoint", "/no/such/weights.pt"], "is not a file"),
        (["--batch-size", "-1"], "--batch-size must be 0 (auto) or more"),
    ],
)
def test_startup_failures_are_one_clear_message(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon], extra: list[str], message: str
) -> None:
    d = start(daemons, tmp_path / "data", tiny_model_config, *extra)
    assert d.proc.wait(timeout=STARTUP_TIMEOUT) == 2
    out = d.output()
    assert message in out
    assert "Traceback" not in out
    if "--checkpoint" in message:
        assert "efficientnet-lite0" in out


def test_data_dir_of_another_model_is_refused(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon]
) -> None:
    first = start(daemons, tmp_path / "data", tiny_model_config)
    first.wait_ready()
    first.stop()
    # Not a Daemon: its --model-config would be refused by the bundled model first.
    argv = [sys.executable, "-m", "imgsearch", "serve", "--port", "0", "--data-dir"]
    argv += [str(tmp_path / "data"), "--model", "efficientnet-lite0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    other = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    assert other.returncode == 2
    assert "holds vectors of model open_clip/imgsearch-test-tiny/random" in other.stderr


def test_environment_variables_configure_the_daemon(
    tmp_path: Path, tiny_model_config: Path, daemons: list[Daemon]
) -> None:
    os.environ["IMGSEARCH_MAX_UPLOAD_MB"] = "3"
    try:
        d = start(daemons, tmp_path / "data", tiny_model_config)
    finally:
        del os.environ["IMGSEARCH_MAX_UPLOAD_MB"]
    d.wait_ready()
    big = b"\0" * (3 * 1024 * 1024 + 10)
    req = urllib.request.Request(
        f"{d.url}/search", data=big, headers={"Content-Type": "image/jpeg"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 413
    assert json.load(err.value)["status"] == 413


def test_a_taken_port_or_unknown_host_is_one_line_before_start_up() -> None:
    """Before: a traceback and exit 1, after the whole start-up (model, index); now bind()
    runs first and says it in one line (exit 2, as every ConfigError)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"^port {port} on 127.0.0.1 is in use$"):
            bind("127.0.0.1", port)
    with pytest.raises(ConfigError, match="^cannot listen on no-such-host.invalid:8080: "):
        bind("no-such-host.invalid", 8080)
    [sock] = bind("127.0.0.1", 0)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
