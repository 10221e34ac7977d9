"""A first run without network: the bundled model with a notice; a CLIP data dir refuses fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsearch.config import OFFLINE_MODEL, Config
from imgsearch.embedders.choice import bound_model, choose_model
from imgsearch.store import Store

from .helpers import CHROMIUM, free_port, serve_process

CLIP_ID = "open_clip/ViT-B-32/laion2b_s34b_b79k"


def _no_network(tmp_path: Path) -> dict[str, str]:
    """Environment of a machine with no way to the hub: a closed port, an empty cache."""
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "HTTPS_PROXY"}}
    env.pop("https_proxy", None)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    env["HF_HOME"] = str(tmp_path / "hf-home")
    return env


def _bind(data_dir: Path, model_id: str, dim: int) -> None:
    data_dir.mkdir(parents=True)
    store = Store(data_dir / "imgsearch.sqlite3")
    store.meta.bind_model(model_id, dim)
    store.close()


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _no_network(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_new_data_dir_without_network_gets_the_bundled_model(
    tmp_path: Path, offline_env: None
) -> None:
    choice = choose_model(Config(data_dir=tmp_path / "new"))
    assert choice.config.model == OFFLINE_MODEL
    assert choice.notice is not None and "--checkpoint" in choice.notice
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # later loads fail at once, no retries


def test_explicit_model_or_clip_data_dir_is_not_replaced(tmp_path: Path, offline_env: None) -> None:
    other = choose_model(Config(data_dir=tmp_path / "a", model="ViT-B-16", pretrained="openai"))
    assert other.config.model == "ViT-B-16" and other.notice is None
    _bind(tmp_path / "clip", CLIP_ID, 512)
    assert bound_model(tmp_path / "clip") == CLIP_ID
    clip = choose_model(Config(data_dir=tmp_path / "clip"))
    assert clip.config.model == "ViT-B-32" and clip.notice is None
    asked = choose_model(Config(data_dir=tmp_path / "new"), fallback=False)  # --model ViT-B-32
    assert asked.config.model == "ViT-B-32" and asked.notice is None
    assert bound_model(tmp_path / "nothing") is None


def test_data_dir_bound_to_the_bundled_model_keeps_it(tmp_path: Path, offline_env: None) -> None:
    _bind(tmp_path / "lite", "efficientnet-lite0/imagenet", 1280)
    choice = choose_model(Config(data_dir=tmp_path / "lite"))
    assert choice.config.model == OFFLINE_MODEL and choice.notice is not None


@pytest.fixture
def first_run_daemon(tmp_path: Path) -> Iterator[str]:
    log = tmp_path / "daemon.log"
    with serve_process(
        log, _no_network(tmp_path), "--data-dir", str(tmp_path / "data"), timeout=120
    ) as url:
        yield url
    text = log.read_text()
    assert "bundled offline model" in text and "!!!!!!!!" in text  # said loudly at start


@pytest.mark.slow
def test_first_run_serves_with_the_bundled_model_and_says_so(first_run_daemon: str) -> None:
    with urllib.request.urlopen(f"{first_run_daemon}/stats", timeout=10) as resp:
        stats = json.load(resp)
    assert stats["model"].startswith(OFFLINE_MODEL)
    assert "bundled offline model" in stats["notice"] and "--data-dir" in stats["notice"]
    if not CHROMIUM.exists():
        return
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.goto(first_run_daemon)
        expect(page.locator("#notice")).to_be_visible(timeout=60_000)
        expect(page.locator("#notice")).to_contain_text("--checkpoint")
        browser.close()


@pytest.mark.slow
def test_clip_data_dir_without_network_refuses_without_retrying(tmp_path: Path) -> None:
    _bind(tmp_path / "data", CLIP_ID, 512)
    args = [sys.executable, "-m", "imgsearch", "serve", "--port", "0"]
    args += ["--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        args, env=_no_network(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "cannot load open_clip ViT-B-32 weights 'laion2b_s34b_b79k'" in done.stderr
    assert "--checkpoint PATH" in done.stderr
    assert "thrown while requesting" not in done.stderr  # no network retries
