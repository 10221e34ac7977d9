"""Loading an embedder from the config: devices, model configs, the bundled model's options,
and an explicit precision this hardware does not run natively."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from imgsearch.config import OFFLINE_MODEL, Config
from imgsearch.embedders import load_embedder, refuse_weights_options, resolve_device
from imgsearch.embedders.base import DTYPES
from imgsearch.embedders.choice import choose_model
from imgsearch.embedders.clip import ClipEmbedder
from imgsearch.embedders.precision import choose_precision, emulated, sample_images
from imgsearch.errors import ConfigError
from imgsearch.store import Store

from .helpers import TINY_CONFIG, TINY_MODEL

FEW = sample_images(128)[:2]


@pytest.fixture
def fresh_tiny(tiny_model_config: Path) -> ClipEmbedder:
    """A tiny open_clip embedder of its own (precision tests change it)."""
    return ClipEmbedder(
        TINY_MODEL, pretrained=None, checkpoint=None, model_config=tiny_model_config, device="cpu"
    )


@pytest.mark.parametrize(
    ("precision", "flags", "emulated"),
    [
        ("fp16", frozenset({"avx512_bf16", "amx_bf16"}), True),  # no CPU runs it natively
        ("bf16", frozenset({"avx2", "avx512f"}), True),
        ("bf16", frozenset({"avx512_bf16"}), False),
    ],
)
def test_an_explicit_precision_this_cpu_emulates_runs_but_says_so(
    fresh_tiny: ClipEmbedder,
    caplog: pytest.LogCaptureFixture,
    precision: str,
    flags: frozenset[str],
    emulated: bool,
) -> None:
    """The user asked, so it runs; /stats's reason and the log say it is emulated (5-16x
    slower than fp32 in a review), instead of "asked for; passed"."""
    with caplog.at_level(logging.WARNING, logger="imgsearch.embedders.precision"):
        runtime = choose_precision(fresh_tiny, precision, flags=flags, images=FEW)
    assert runtime.precision == precision
    assert next(fresh_tiny.module.parameters()).dtype == getattr(torch, DTYPES[precision])
    reason = fresh_tiny.runtime.as_json()["precision_reason"]
    assert ("emulated" in reason) == emulated and reason.endswith("passed")
    assert ("not native on this CPU" in caplog.text) == emulated


def test_only_a_cpu_is_judged_for_emulation() -> None:
    assert emulated("fp16", "cpu", frozenset()) is not None
    assert emulated("fp16", "cuda:0", frozenset()) is None
    assert emulated("bf16", "mps", frozenset()) is None
    assert emulated("fp32", "cpu", frozenset()) is None


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "meta", ""])
def test_a_device_torch_cannot_use_is_one_line(device: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_embedder(Config(model=OFFLINE_MODEL, device=device))
    expected = f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
    assert str(caught.value) == expected


def test_devices_are_read_in_any_case_and_checked_against_this_machine() -> None:
    assert resolve_device("CPU") == resolve_device(" cpu ") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
            resolve_device("CUDA:1")
    else:
        count = torch.cuda.device_count()
        assert resolve_device("CUDA") == "cuda"
        with pytest.raises(ConfigError, match=f"torch sees {count} CUDA GPU"):
            resolve_device(f"cuda:{count}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="no MPS"):
            resolve_device("mps")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"embed_dim": 32, "vision_cfg": {', "is not valid JSON: Expecting property name"),
        ("\udcff\udcfe garbage", "is not valid JSON"),
        ('{"embed_dim": 32}', "is not an open_clip model config: it needs the keys embed_dim"),
        ("[1, 2]", "is not an open_clip model config"),
    ],
)
def test_a_bad_model_config_is_one_line_and_harms_no_later_one(
    tmp_path: Path, tiny_model_config: Path, content: str, message: str
) -> None:
    """open_clip keeps every config path it is given and reads them all again at each
    registration: a bad one, if handed over, would break every later model's load too."""
    bad = tmp_path / "mymodel.json"
    bad.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as caught:
        ClipEmbedder("mymodel", pretrained=None, checkpoint=None, model_config=bad, device="cpu")
    assert str(caught.value).startswith(f"--model-config {bad} ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
    good = tmp_path / "other-tiny.json"
    good.write_text(json.dumps(TINY_CONFIG))
    embedder = ClipEmbedder(
        "other-tiny", pretrained=None, checkpoint=None, model_config=good, device="cpu"
    )
    assert embedder.model_id == "open_clip/other-tiny/random"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"checkpoint": Path("/w/my-finetuned.pt")}, "--checkpoint /w/my-finetuned.pt"),
        ({"pretrained": "openai"}, "--pretrained openai"),
        ({"model_config": Path("/w/mine.json")}, "--model-config /w/mine.json"),
    ],
)
def test_the_bundled_model_refuses_open_clip_weight_options(
    given: dict[str, object], named: str
) -> None:
    config = Config(model=OFFLINE_MODEL, device="cpu", **given)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="the bundled model with its own weights") as caught:
        load_embedder(config)
    assert f"(given: {named})" in str(caught.value)


def test_the_bundled_model_takes_the_default_tag_every_config_carries(tmp_path: Path) -> None:
    """Config always carries the default tag, and `none` asks for no weights: neither is an
    option the bundled model would ignore. A first run's fallback drops a --model-config."""
    refuse_weights_options(Config(model=OFFLINE_MODEL))
    refuse_weights_options(Config(model=OFFLINE_MODEL, pretrained=None))
    data_dir = tmp_path / "lite"
    data_dir.mkdir()
    store = Store(data_dir / "imgsearch.sqlite3")  # bound by an earlier first run's fallback
    store.meta.bind_model("efficientnet-lite0/imagenet", 1280)
    store.close()
    choice = choose_model(Config(data_dir=data_dir, model_config=Path("/w/clip.json")))
    assert choice.config.model == OFFLINE_MODEL and choice.config.model_config is None
    refuse_weights_options(choice.config)
