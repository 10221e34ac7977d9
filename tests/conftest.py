"""Fixtures: real photos on disk, a tiny random-weight open_clip model, the offline model."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app

from .helpers import (
    PHOTOS,
    TINY_CONFIG,
    TINY_MODEL,
    TOKEN,
    ClientFactory,
    Daemon,
    photo,
    serve_in_thread,
    serve_process,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def any_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tree of centres counted worth it (tree.MAX_SHARE_WORTH): a test's few dozen
    lists make trees whose groups hold most centres, which the index would not use."""
    import math

    from imgsearch.index import tree

    monkeypatch.setattr(tree, "MAX_SHARE_WORTH", math.inf)


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / f"{TINY_MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_config: Path) -> Embedder:
    """open_clip's real code path on a tiny architecture with seeded random weights."""
    from imgsearch.embedders.clip import ClipEmbedder

    return ClipEmbedder(
        TINY_MODEL, pretrained=None, checkpoint=None, model_config=tiny_model_config, device="cpu"
    )


@pytest.fixture(scope="session")
def lite0() -> Embedder:
    """The bundled offline ImageNet model: real similarity."""
    from imgsearch.embedders.cnn import EfficientNetLite0

    return EfficientNetLite0("cpu")


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """A few real photos as JPEGs in a folder of their own."""
    folder = tmp_path / "photos"
    folder.mkdir()
    out = {}
    for name in PHOTOS[:5]:
        out[name] = folder / f"{name}.jpg"
        photo(name).save(out[name], quality=90)
    return out


@pytest.fixture
def config(tmp_path: Path, tiny_model_config: Path) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        model=TINY_MODEL,
        pretrained=None,
        model_config=tiny_model_config,
        batch_size=4,
        workers=2,
        max_upload_mb=2,
    ).resolved()


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_app(config, embedder=tiny_embedder))


@pytest.fixture
def live_server(tiny_embedder: Embedder) -> Iterator[Callable[[Config], str]]:
    """`live_server(config)`: the real app serving on an ephemeral port in a thread (for blocking
    clients such as the CLI); its base URL. Stopped, with its service closed, after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda config: stack.enter_context(
            serve_in_thread(create_app(config, embedder=tiny_embedder))
        )


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemon subprocesses started by the test (helpers.start); killed and reaped after it."""
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.wait()


@pytest.fixture
def lite0_daemon(tmp_path: Path) -> Iterator[str]:
    """A real daemon with the bundled offline model and a token; yields its URL."""
    args = ["--data-dir", str(tmp_path / "data"), "--model", "efficientnet-lite0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with serve_process(tmp_path / "daemon.log", env, *args, "--token", TOKEN) as url:
        yield url
