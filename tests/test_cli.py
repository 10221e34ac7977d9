"""The command line's shape: global options before or after the command, usage errors, and the
command table, against the real app on a real port (in a thread: fast lane)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.server
import inspect
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from imgsearch import cli
from imgsearch.client import Context
from imgsearch.commands import COMMANDS
from imgsearch.config import Config

from .helpers import free_port, photo, run_cli, serve_in_thread, wait_for

Serve = Callable[[Config], str]
CLIENT_ONLY = "--url, --json and --timeout are for the client commands, not serve"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the command line says where the daemon is (the default port has none)."""
    for name in ("URL", "TOKEN", "DATA_DIR", "TIMEOUT"):
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
        (["--url", "http://h:1", "serve"], CLIENT_ONLY),
        (["--json"], CLIENT_ONLY),
        (["--timeout", "5"], CLIENT_ONLY),
        (["stats", "--limit", "3"], "unrecognized arguments: --limit 3"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--url"], "argument --url: expected one argument"),
        (["stats", "--url"], "argument --url: expected one argument"),
        (["--url", "http://h:1", "search"], "give either an image or --text"),
        (["search", "--text", "cat", "--upload", "--json"], "--upload needs an image file"),
        (["watch", "--stop", "--url", "http://h:1"], "--stop needs a folder"),
        (["remove", "https://example.org/cat.jpg"], "remove takes a path, not a URL: an image"),
        (["import", "/x", "--path-map", "/old=new"], "NEW must be an absolute path or an http"),
        (["import", "/x", "--path-map", "old=/new"], "OLD must be an absolute path or an http"),
        (["import", "/x", "--path-map", "/old"], "path map must be OLD=NEW"),
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
    global_dests = {"url", "token", "data_dir", "json", "verbose", "timeout", "command"}
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


# -- what the client prints, and what it refuses to send ----------------------------------------

HOSTILE = "a\x1b]0;PWNED\x07\x1b[2J\nfake"  # retitles and clears a terminal; forges a row


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HOSTILE, "a\\x1b]0;PWNED\\x07\\x1b[2J\\nfake"),
        ("tab\there\r", "tab\\there\\r"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),  # NUL, DEL, the one-byte CSI
        ("\u2028\u2029\u202e", "\\u2028\\u2029\\u202e"),  # line breaks; right-to-left override
        (os.fsdecode(b"caf\xe9.jpg"), "caf\\xe9.jpg"),  # the byte that is not UTF-8
        ("café 東京 a\\x1b b", "café 東京 a\\x1b b"),  # readable text and backslashes stay
        (12.5, "12.5"),
    ],
)
def test_shown_escapes_what_a_terminal_acts_on(text: object, expected: str) -> None:
    from imgsearch import formatting

    assert formatting.shown(text) == expected
    assert formatting.shown(expected) == expected


def test_plain_output_escapes_names_and_messages_json_keeps_them(
    capsys: pytest.CaptureFixture[str], live_server: Serve, config: Config, tmp_path: Path
) -> None:
    """Paths and the daemon's messages reach the terminal escaped, each on its own line, in
    every table and list; --json gives them exactly."""
    url = live_server(config)
    lib = tmp_path / f"lib{HOSTILE}"
    lib.mkdir()
    photo("chelsea", 96).save(lib / f"{HOSTILE}.jpg")
    photo("chelsea", 96).save(lib / "copy.jpg")
    (lib / "bad\x1b[31m.jpg").write_bytes(b"not an image")
    dirname = str(tmp_path / "lib") + "a\\x1b]0;PWNED\\x07\\x1b[2J\\nfake"
    outputs = []
    for argv, lines in [
        (["add", str(lib)], 2),  # the summary and the failed file
        (["search", str(lib / "copy.jpg")], 3),
        (["duplicates"], 5),
        (["jobs"], 2),
        (["watch", str(lib)], 2),
        (["watch"], 2),
    ]:
        code, out, err = run_cli(capsys, "--url", url, *argv)
        assert code == 0, err
        assert len(out.splitlines()) == lines, out
        outputs.append(out)
    assert f"  {dirname}/bad\\x1b[31m.jpg: " in outputs[0]
    assert f"{dirname}/a\\x1b]0;PWNED\\x07\\x1b[2J\\nfake.jpg\n" in outputs[1]
    assert outputs[2].count(dirname) == 2 and all(o.rstrip().endswith(dirname) for o in outputs[3:])
    code, out, err = run_cli(capsys, "--url", url, "search", str(lib / "gone\x07.jpg"))
    assert (code, out) == (1, "")
    assert err == f"error: no such file: {dirname}/gone\\x07.jpg (HTTP 404)\n"
    code, out, _ = run_cli(capsys, "--url", url, "--json", "search", str(lib / "copy.jpg"))
    assert {h["image"] for h in json.loads(out)["results"]} == {
        str(lib / f"{HOSTILE}.jpg"),
        str(lib / "copy.jpg"),
    }
    assert not {"\x1b", "\x07"} & set("".join(outputs) + out + err)  # (JSON escapes them too)


NOT_UTF8 = os.fsdecode(b"caf\xe9.jpg")


@pytest.mark.parametrize(
    "argv",
    [
        ["search", NOT_UTF8],
        ["add", NOT_UTF8],
        ["add", NOT_UTF8, "--metadata", "{}"],
        ["remove", NOT_UTF8],
        ["watch", NOT_UTF8],
        ["search", "--text", "cat", "--folder", NOT_UTF8],
        ["duplicates", "--folder", NOT_UTF8],
    ],
)
def test_a_file_name_that_is_not_utf8_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == f"error: {tmp_path}/caf\\xe9.jpg: file name is not valid UTF-8; rename it\n"


def test_other_arguments_that_are_not_utf8_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["search", "--text", NOT_UTF8], ["search", "--text", "x", "--where", NOT_UTF8]):
        assert run_cli(capsys, *argv) == (2, "", "error: caf\\xe9.jpg: not valid UTF-8\n")
    code, _, err = run_cli(capsys, "jobs", NOT_UTF8)
    assert (code, err) == (2, "error: caf\\xe9.jpg: not valid UTF-8\n")


def test_an_upload_sends_any_file_name(
    capsys: pytest.CaptureFixture[str], live_server: Serve, config: Config, tmp_path: Path
) -> None:
    """--upload sends bytes, not the path: a name that is not UTF-8 is no obstacle."""
    query = tmp_path / NOT_UTF8
    photo("coffee", 96).save(query, format="JPEG")
    code, out, err = run_cli(capsys, "--url", live_server(config), "search", str(query), "--upload")
    assert (code, out) == (0, "no results\n"), err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--url", "http://[::1"], {}, "error: invalid --url 'http://[::1': Invalid IPv6 URL\n"),
        (["--url", "http://h:port"], {}, "error: invalid --url 'http://h:port': Port could not"),
        (["--url", "ftp://h"], {}, "error: invalid --url 'ftp://h': the daemon speaks http://"),
        (["--url", "http://h\x1b/"], {}, "error: invalid --url 'http://h\\x1b/': it holds spaces"),
        (["--url", "http:///x"], {}, "error: invalid --url 'http:///x': no host\n"),
        ([], {"IMGSEARCH_URL": "http://[::1"}, "error: invalid --url 'http://[::1': Invalid"),
        (["--token", "t0k\nX-Evil: 1"], {}, "error: invalid --token: it holds '\\n'; a token"),
        ([], {"IMGSEARCH_TOKEN": "tökén"}, "error: invalid --token: it holds 'ö'; a token is"),
        (["--timeout", "soon"], {}, "error: invalid --timeout 'soon': seconds, or 0 for no"),
        (["--timeout", "-1"], {}, "error: invalid --timeout '-1'"),
        ([], {"IMGSEARCH_TIMEOUT": "nan"}, "error: invalid --timeout 'nan'"),
    ],
)
def test_options_that_cannot_make_a_request_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, *argv, "stats")
    assert (code, out) == (2, "")
    assert err.startswith(message) and "tökén" not in err  # (a token is never shown)


def test_a_token_with_a_trailing_newline_is_sent_without_it(
    capsys: pytest.CaptureFixture[str],
    live_server: Serve,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TOKEN=$(cat file; echo): whitespace around a token is never part of it."""
    url = live_server(dataclasses.replace(config, token="s3cret"))
    monkeypatch.setenv("IMGSEARCH_TOKEN", " s3cret\n")
    code, out, err = run_cli(capsys, "--url", url, "stats")
    assert code == 0 and "images: 0" in out.splitlines(), err


@contextlib.contextmanager
def answering(body: bytes, delay_s: float = 0.0, status: int = 200) -> Iterator[str]:
    """An HTTP server that is not imgsearch: `status` and `body` to every GET and POST (after
    `delay_s`); its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay_s)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.HTTPServer):
        def handle_error(self, *args: Any) -> None:
            pass  # a client that gave up waiting

    with Server(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


@pytest.mark.parametrize(
    ("body", "argv", "answered"),
    [
        (b"<html>hi</html>", ["stats"], "GET /stats answered '<html>hi</html>', not a JSON object"),
        (b"[1, 2]", ["search", "--text", "cat"], "GET /search answered '[1, 2]', not a JSON"),
        (b"<html>hi</html>", ["add", "/tmp"], "GET /add answered '<html>hi</html>', not a"),
        (b'{"ok": true}', ["add", "/tmp"], "its answer to an add names no job"),
        (b'{"status": "ok"}', ["import", "/tmp"], "its answer to an import names no job"),
        (b'{"status": "ok"}', ["export", "/tmp/x"], "its answer to an export names no job"),
        (b'{"id": 1}', ["export", "/tmp/x", "--no-wait"], "its answer to an export names no"),
        (b"", ["jobs"], "GET /jobs answered nothing, not a JSON object"),
    ],
)
def test_a_server_that_is_not_imgsearch_is_an_error(
    capsys: pytest.CaptureFixture[str], body: bytes, argv: list[str], answered: str
) -> None:
    with answering(body) as url:
        code, out, err = run_cli(capsys, "--url", url, *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: not an imgsearch daemon at {url} ({answered}")


def test_another_servers_error_page_is_one_short_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong port or another web server nearly always answers 404 with a page of its own:
    that too says no imgsearch daemon answered (it printed the page's start)."""
    page = b"<html>\n<h1>Not Found</h1>\n" + b"x" * 500 + b"</html>"
    with answering(page, status=404) as url:
        code, out, err = run_cli(capsys, "--url", url, "stats")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"error: not an imgsearch daemon at {url} (GET /stats (HTTP 404) answered '<html>\\n"
    )
    assert len(err.splitlines()) == 1


@pytest.fixture
def silent() -> Iterator[str]:
    """A daemon that takes connections (the kernel's backlog) and does not answer: its URL.
    After 10 s it resets them, so that a client that waits for ever fails instead of hanging."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        reset = threading.Timer(10, sock.close)
        reset.start()
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            reset.cancel()


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["stats", "--timeout", "0.2"], {}),
        (["duplicates", "--timeout", "0.2"], {}),  # one given applies to every request
        (["watch"], {"IMGSEARCH_TIMEOUT": "0.2"}),
    ],
)
def test_no_answer_within_the_timeout_exits_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    silent: str,
    argv: list[str],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code, out, err = run_cli(capsys, "--url", silent, *argv)
    assert (code, out) == (2, "") and time.monotonic() - started < 5
    assert err.startswith(f"no answer from imgsearch at {silent} within 0.2 s: is it stuck?")


def test_quick_commands_wait_briefly_by_default_long_ones_as_long_as_it_takes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgsearch import client

    monkeypatch.setattr(client, "QUICK_S", 0.2)
    with answering(b'{"clusters": [], "images": 0, "threshold": 0.15}', delay_s=0.5) as url:
        for argv in (["stats"], ["jobs"], ["watch"]):
            code, _, err = run_cli(capsys, "--url", url, *argv)
            assert code == 2 and "within 0.2 s" in err, argv
        code, out, err = run_cli(capsys, "--url", url, "duplicates")
        assert (code, out) == (
            0,
            "no duplicates among 0 images (threshold 0.15, not verified: no verify comparator)\n",
        ), err
        code, _, err = run_cli(capsys, "--url", url, "stats", "--timeout", "0")  # no limit
        assert code == 0, err


# -- where the daemon is, what is sent, and jobs followed ---------------------------------------


def test_the_default_url_is_on_the_port_serve_reads(
    capsys: pytest.CaptureFixture[str],
    live_server: Serve,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`docker run -e IMGSEARCH_PORT=9000` then `docker exec ... imgsearch stats`: before, the
    client asked port 8080 whatever IMGSEARCH_PORT said."""
    port = live_server(config).rsplit(":", 1)[1]
    monkeypatch.delenv("IMGSEARCH_URL")
    monkeypatch.setenv("IMGSEARCH_PORT", port)
    for host in ("", "0.0.0.0", "localhost"):  # a wildcard is asked on 127.0.0.1
        monkeypatch.setenv("IMGSEARCH_HOST", host)
        code, out, err = run_cli(capsys, "-v", "stats")
        assert code == 0 and "images: 0" in out.splitlines(), err
        assert f"GET http://{host if host == 'localhost' else '127.0.0.1'}:{port}/stats" in err
    code, _, err = run_cli(capsys, "stats", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach imgsearch" in err  # --url still wins
    monkeypatch.setenv("IMGSEARCH_PORT", "http")
    message = "error: invalid IMGSEARCH_PORT 'http': a port number, 0..65535\n"
    assert run_cli(capsys, "stats") == (2, "", message)


def test_add_csv_paths_are_relative_to_the_csv(
    capsys: pytest.CaptureFixture[str],
    live_server: Serve,
    config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: relative cells of a `path` column were sent as they were, and every row failed
    (exit 0)."""
    url = live_server(config)
    (tmp_path / "shop" / "pics").mkdir(parents=True)
    photo("coffee", 96).save(tmp_path / "shop" / "pics" / "a 1.jpg")
    photo("rocket", 96).save(tmp_path / "elsewhere.jpg")
    rows = f'path,sku\n"pics/a 1.jpg","A-1, red"\n{tmp_path / "elsewhere.jpg"},B-2\n'
    (tmp_path / "shop" / "list.csv").write_text(rows)
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    code, out, err = run_cli(capsys, "--url", url, "add", "--csv", "shop/list.csv")
    assert (code, out) == (0, "added 2, updated 0, skipped 0, failed 0\n"), err
    code, out, _ = run_cli(capsys, "--url", url, "--json", "search", "shop/pics/a 1.jpg")
    hits = {h["image"]: h.get("metadata") for h in json.loads(out)["results"]}
    assert hits == {
        str(tmp_path / "shop" / "pics" / "a 1.jpg"): {"sku": "A-1, red"},
        str(tmp_path / "elsewhere.jpg"): {"sku": "B-2"},
    }
    code, out, _ = run_cli(capsys, "add", "--help")
    assert code == 0 and "'path' column" in " ".join(out.split())


def following(
    kind: str, poll_s: float = 0.0, polled: threading.Event | None = None
) -> web.Application:
    """A stand-in daemon for following a job of `kind` (job, import, export) whose every poll
    answers `running` after `poll_s` (and sets `polled`): what the CLI reads of a real one."""
    job = {"id": "j-1", "kind": kind, "state": "running", "total": 5, "done": 1, "failed": 0}

    async def start(request: web.Request) -> web.Response:
        return web.json_response({"job": "j-1"} if kind == "job" else job, status=202)

    async def poll(request: web.Request) -> web.Response:
        if polled is not None:
            polled.set()
        await asyncio.sleep(poll_s)
        return web.json_response(job)

    app = web.Application()
    app.router.add_route("*", "/add", start)
    app.router.add_post(f"/{kind}", start)
    app.router.add_get("/jobs/j-1" if kind == "job" else f"/{kind}/j-1", poll)
    return app


COMMAND_OF = {"job": ["add", "/tmp"], "import": ["import", "/tmp"], "export": ["export", "/tmp/x"]}


@pytest.mark.parametrize("kind", ["import", "export", "job"])
def test_ctrl_c_while_following_says_the_id_and_leaves_the_job(kind: str) -> None:
    """Before: import and export exited 130 without a word, and their ids could be used by no
    command. A real SIGINT, to a real process, while it follows."""
    import signal
    import subprocess
    import sys

    polled = threading.Event()
    with serve_in_thread(following(kind, polled=polled)) as url:
        argv = [sys.executable, "-m", "imgsearch", "--url", url, *COMMAND_OF[kind]]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As a terminal's Ctrl-C finds it: a test run started in the background (`cmd &`
            # in a script) has SIGINT ignored, and a child inherits that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        with proc:  # (its pipes closed whatever happens)
            try:
                wait_for("the command to follow its job", polled.is_set, timeout=60)
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
            finally:
                proc.kill()
                proc.wait()
    assert (proc.returncode, out) == (130, ""), err
    said = f"still running as {kind} j-1 (imgsearch jobs --cancel j-1 to stop it)"
    assert err.splitlines()[-1] == said, err


@pytest.mark.parametrize("kind", ["import", "export", "job"])
def test_a_daemon_lost_while_following_is_said_with_the_job(
    capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    with serve_in_thread(following(kind, poll_s=1.0)) as url:
        code, out, err = run_cli(capsys, "--url", url, "--timeout", "0.3", *COMMAND_OF[kind])
    assert (code, out) == (2, "")
    lines = err.replace("\r", "\n").splitlines()
    assert lines[-2].startswith(f"no answer from imgsearch at {url} within 0.3 s"), err
    said = f"lost track of {kind} j-1: imgsearch jobs j-1 shows it once the daemon answers"
    assert lines[-1] == said, err


def test_an_import_summary_counts_skipped_rows_and_says_how_many_are_not_listed() -> None:
    from imgsearch.formatting import format_import

    job = {"state": "done", "imported": 2, "skipped": 3, "failed": 4}
    job["errors"] = [{"file": "/s/a.parquet", "row": 7, "error": "path must be absolute"}]
    assert format_import(job).splitlines() == [
        "state: done",
        "imported: 2",
        "skipped: 3",
        "failed: 4",
        "  /s/a.parquet row 7: path must be absolute",
        "  ... and 3 more",
    ]
