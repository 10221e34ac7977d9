"""The command line's shape: global options before or after the command, usage errors, and the
command table, against the real app on a real port (in a thread: fast lane)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgsearch import cli
from imgsearch.client import Context
from imgsearch.commands import COMMANDS
from imgsearch.config import Config

from .helpers import free_port, photo, run_cli

Serve = Callable[[Config], str]


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the command line says where the daemon is (the default port has none)."""
    for name in ("URL", "TOKEN", "DATA_DIR"):
        monkeypatch.delenv(f"IMGSEARCH_{name}", raising=False)
    monkeypatch.setenv("IMGSEARCH_URL", f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize(
    "order",
    [
        ["--url", "{url}", "--json", "stats"],
        ["stats", "--url", "{url}", "--json"],
        ["--json", "stats", "--url={url}"],
        ["-v", "--url", "{url}", "stats", "--json"],
        ["--url", "http://127.0.0.1:1", "--json", "stats", "--url", "{url}"],  # the later wins
    ],
)
def test_global_options_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], live_server: Serve, config: Config, order: list[str]
) -> None:
    url = live_server(config)
    code, out, err = run_cli(capsys, *(a.format(url=url) for a in order))
    assert code == 0, err
    assert json.loads(out)["dim"] == 32
    assert ("GET " in err) == ("-v" in order)  # --verbose logs each request


def test_command_options_and_global_options_mix(
    capsys: pytest.CaptureFixture[str], live_server: Serve, config: Config, photos: dict[str, Path]
) -> None:
    url = live_server(config)
    folder = photos["coffee"].parent
    code, out, err = run_cli(capsys, "--url", url, "add", str(folder), "--no-wait", "--json")
    assert code == 0 and "job" in json.loads(out), err
    job = json.loads(out)["job"]
    assert run_cli(capsys, "jobs", job, "--url", url)[0] == 0
    code, out, err = run_cli(capsys, "add", str(folder), "--url", url)  # waits; all skipped
    assert (code, out) == (0, "added 0, updated 0, skipped 5, failed 0\n"), err
    code, out, _ = run_cli(capsys, "--url", url, "search", str(photos["coffee"]), "--limit", "2")
    header, first, _second = out.splitlines()
    assert code == 0 and header.split() == ["#", "distance", "image"]
    assert first.split() == ["1", "0.0000", str(photos["coffee"])]


def test_token_auto_reads_the_data_dir_given_in_either_place(
    capsys: pytest.CaptureFixture[str], live_server: Serve, config: Config
) -> None:
    url = live_server(dataclasses.replace(config, token="auto"))  # writes DATA_DIR/token
    data = str(config.data_dir)
    code, _, err = run_cli(capsys, "stats", "--url", url)
    assert code == 1 and err.startswith("error: a valid token is required") and "(HTTP 401)" in err
    for argv in (
        ["--data-dir", data, "--token", "auto", "--url", url, "stats"],
        ["stats", "--token", "auto", "--url", url, "--data-dir", data],
        ["--token", "auto", "stats", "--url", url, "--data-dir", data],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0 and "images: 0" in out.splitlines(), err
    code, _, err = run_cli(capsys, "--token", "auto", "--data-dir", data + "-nowhere", "stats")
    assert code == 2 and "--token auto: cannot read" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "9000", "stats"], "unrecognized arguments: stats"),
        (["--url", "http://h:1", "serve"], "--url and --json are for the client commands"),
        (["--json"], "--url and --json are for the client commands"),
        (["stats", "--limit", "3"], "unrecognized arguments: --limit 3"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--url"], "argument --url: expected one argument"),
        (["stats", "--url"], "argument --url: expected one argument"),
        (["--url", "http://h:1", "search"], "give either an image or --text"),
        (["search", "--text", "cat", "--upload", "--json"], "--upload needs an image file"),
        (["watch", "--stop", "--url", "http://h:1"], "--stop needs a folder"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "--data-dir", "/tmp/d", "--port", "9123"],
        ["serve", "--port", "9123", "-v", "--data-dir", "/tmp/d"],
        ["--data-dir", "/tmp/d", "serve", "-v", "--port", "9123"],
        ["--data-dir=/tmp/d", "-v", "serve", "--port=9123"],
    ],
)
def test_serve_takes_the_global_options_in_either_place(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "serve", lambda args: seen.append(args) or 0)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    [args] = seen
    assert (args["port"], args["data_dir"], args["verbose"]) == (9123, Path("/tmp/d"), True)
    assert set(args) <= {f.name for f in dataclasses.fields(Config)}
    assert Config.load(environ={}, overrides=args).verbose is True


def test_every_command_row_matches_its_function() -> None:
    """A row's arguments reach its function as keywords of the same names (see commands.py)."""
    names = [row.name for row in COMMANDS]
    assert len(set(names)) == len(names) and "serve" not in names
    global_dests = {"url", "token", "data_dir", "json", "verbose", "command"}
    for row in COMMANDS:
        parser = argparse.ArgumentParser()
        for a in row.args:  # Arg.dest is the name argparse stores the value under
            assert parser.add_argument(*a.names, **a.options).dest == a.dest, row.name
        dests = [a.dest for a in row.args]
        assert not global_dests & set(dests), row.name
        inspect.signature(row.run).bind(Context(), **dict.fromkeys(dests))
        assert row.help and row.run.__doc__, row.name


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--url", "http://h:1", "--help")
    assert code == 0 and "--url" in out
    for row in COMMANDS:
        assert row.name in out
    code, out, _ = run_cli(capsys, "stats", "--help")
    assert code == 0 and "--json" in out and "--token" in out


def test_a_photo_path_is_sent_absolute(
    capsys: pytest.CaptureFixture[str],
    live_server: Serve,
    config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGSEARCH_URL", live_server(config))
    monkeypatch.chdir(tmp_path)
    photo("coins", 120).save("coins.jpg")
    assert run_cli(capsys, "add", "coins.jpg")[:2] == (
        0,
        "added 1, updated 0, skipped 0, failed 0\n",
    )
    assert run_cli(capsys, "remove", "coins.jpg", "--json")[:2] == (0, '{\n  "removed": 1\n}\n')


def test_add_with_metadata_then_search_returns_it(
    capsys: pytest.CaptureFixture[str], live_server: Serve, config: Config, photos: dict[str, Path]
) -> None:
    url = live_server(config)
    meta = '{"sku": "A-1042", "price": 12.5, "in_stock": true}'
    code, out, err = run_cli(capsys, "--url", url, "add", str(photos["coffee"]), "--metadata", meta)
    assert (code, out) == (0, "added 1, updated 0, skipped 0, failed 0\n"), err
    code, out, err = run_cli(capsys, "--json", "--url", url, "search", str(photos["coffee"]))
    (hit,) = json.loads(out)["results"]
    assert code == 0 and hit["metadata"] == {"sku": "A-1042", "price": 12.5, "in_stock": True}
    code, _, err = run_cli(capsys, "--url", url, "add", str(photos["coffee"]), "--metadata", "[1]")
    assert code == 2 and "--metadata must be a JSON object" in err
    folder = str(photos["coffee"].parent)
    code, _, err = run_cli(capsys, "--url", url, "add", folder, "--metadata", '{"a": "b"}')
    assert code == 1 and "one image" in err, err  # the daemon's 400, as one clear line


async def test_serve_tunes_the_interpreter_once_up() -> None:
    """`serve`'s start-up hook freezes the heap, collects the youngest generation every
    GC_YOUNG allocations and hands the GIL over after SWITCH_INTERVAL_S (restored after)."""
    import gc
    import sys

    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    assert (threshold[0], interval) != (cli.GC_YOUNG, cli.SWITCH_INTERVAL_S)
    try:
        await cli._tune_interpreter(None)
        assert gc.get_threshold() == (cli.GC_YOUNG, *threshold[1:])
        assert sys.getswitchinterval() == pytest.approx(cli.SWITCH_INTERVAL_S)
        assert gc.get_freeze_count() > 1000  # the modules and their objects
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)


LEAVING = """
import logging, os, sys, threading, time
import numpy as np
from imgsearch.cli import leave
from imgsearch.cpu import torch_threads
from imgsearch.index import kmeans

logging.basicConfig(level=logging.INFO)
x = np.random.default_rng(0).random((60_000, 512), dtype=np.float32)

def train():
    with torch_threads(os.cpu_count() or 1):
        kmeans.two_level(x, 4_096, True, 0, tree_from=4_096)
        print("the training ended first", flush=True)

before = set(threading.enumerate())
threading.Thread(target=train, name="index-worker", daemon=True).start()
time.sleep(1.0)
leave(3, before)
"""


def test_a_daemon_leaves_cleanly_while_a_training_still_runs() -> None:
    """The daemon's exit while an abandoned build's k-means still runs on a daemon thread:
    the exit code it was given, no abort. (Python's own exit there aborts in C++'s static
    destructors: "terminate called without an active exception", exit -6 after a SIGTERM
    in a 1280-d training, bench/stop_import.py.)"""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LEAVING], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
    assert "the training ended first" not in done.stdout  # (it was still running)
    assert "exiting with background threads left: index-worker" in done.stderr


def test_leaving_with_no_background_thread_of_its_own_is_an_ordinary_exit() -> None:
    """Threads that ran before the daemon (a test runner's) are not the daemon's: its exit
    is Python's own (SystemExit), which a caller in the same process can catch."""
    import threading

    idle = threading.Event()
    theirs = threading.Thread(target=idle.wait, daemon=True)
    theirs.start()
    try:
        with pytest.raises(SystemExit) as exc:
            cli.leave(4, set(threading.enumerate()))
        assert exc.value.code == 4
    finally:
        idle.set()
