"""Config: defaults, IMGSEARCH_* variables, flags on top, and clear errors for bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgsearch.cli import build_parser
from imgsearch.config import Config
from imgsearch.errors import ConfigError
from imgsearch.security import with_token


def test_defaults() -> None:
    c = Config.load(environ={})
    assert (c.host, c.port, c.model, c.pretrained) == (
        "127.0.0.1",
        8080,
        "ViT-B-32",
        "laion2b_s34b_b79k",
    )
    assert c.device == "auto" and c.data_dir == Path("data")


def test_environment_then_flags() -> None:
    env = {
        "IMGSEARCH_PORT": "9000",
        "IMGSEARCH_HOST": "::1",
        "IMGSEARCH_VERBOSE": "yes",
        "IMGSEARCH_PRETRAINED": "none",
        "IMGSEARCH_CHECKPOINT": "/w/clip.pt",
        "IMGSEARCH_MAX_UPLOAD_MB": "2.5",
    }
    c = Config.load(environ=env, overrides={"port": 9100, "host": None})
    assert (c.port, c.host, c.verbose, c.pretrained) == (9100, "::1", True, None)
    assert c.checkpoint == Path("/w/clip.pt") and c.max_upload_bytes == int(2.5 * 1024 * 1024)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMGSEARCH_PORT": "eighty"}, "IMGSEARCH_PORT='eighty' is not a valid int"),
        ({"IMGSEARCH_PORT": "70000"}, "--port must be 0..65535"),
        ({"IMGSEARCH_VERBOSE": "perhaps"}, "is not a valid bool"),
        ({"IMGSEARCH_WORKERS": "0"}, "--workers must be at least 1"),
        ({"IMGSEARCH_RECALL": "0"}, "--recall must be over 0 and at most 1"),
        ({"IMGSEARCH_RECALL": "1.5"}, "--recall must be over 0 and at most 1"),
        ({"IMGSEARCH_RECALL": "nan"}, "--recall must be over 0 and at most 1"),
    ],
)
def test_bad_values_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(environ=env)


def test_cli_flags_map_onto_config_fields() -> None:
    ns = build_parser().parse_args(
        ["serve", "--port", "1234", "--data-dir", "/tmp/d", "--model", "efficientnet-lite0"]
    )
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    c = Config.load(environ={}, overrides=args)
    assert (c.port, c.data_dir, c.model) == (1234, Path("/tmp/d"), "efficientnet-lite0")
    assert set(args) <= {f for f in Config.__dataclass_fields__}


def test_threads_default_and_validation() -> None:
    assert Config.load(environ={}).threads >= 1
    assert Config.load(environ={"IMGSEARCH_THREADS": "3"}).threads == 3
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        Config.load(environ={"IMGSEARCH_THREADS": "0"})


def test_recall_sets_the_index_policy_target() -> None:
    assert Config.load(environ={}).index_policy().target_recall == 0.97
    ns = build_parser().parse_args(["serve", "--recall", "0.9"])
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    assert Config.load(environ={}, overrides=args).index_policy().target_recall == 0.9


def test_warm_database_auto_by_default_else_flag_or_variable() -> None:
    def parsed(*argv: str) -> dict[str, object]:
        ns = build_parser().parse_args(["serve", *argv])
        return {k: v for k, v in vars(ns).items() if k != "command"}

    assert Config.load(environ={}, overrides=parsed()).warm_database == "auto"
    assert Config.load(environ={}, overrides=parsed("--warm-database", "on")).warm_database == "on"
    env = {"IMGSEARCH_WARM_DATABASE": "off"}
    assert Config.load(environ=env, overrides=parsed()).warm_database == "off"
    with pytest.raises(ConfigError, match="--warm-database must be one of auto|on|off"):
        Config.load(environ={}, overrides=parsed("--warm-database", "yes"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMGSEARCH_MAX_UPLOAD_MB": "nan"}, "--max-upload-mb must be a positive, finite"),
        ({"IMGSEARCH_MAX_UPLOAD_MB": "inf"}, "--max-upload-mb must be a positive, finite"),
        ({"IMGSEARCH_MAX_IMAGE_PIXELS": "-5"}, "--max-image-pixels must be at least 1"),
        ({"IMGSEARCH_PRECOMPUTE_LIMIT": "-1"}, "IMGSEARCH_PRECOMPUTE_LIMIT must be at least 0"),
        ({"IMGSEARCH_INDEX_EXACT_MAX": "-1"}, "IMGSEARCH_INDEX_EXACT_MAX must be at least 0"),
        ({"IMGSEARCH_INDEX_DELTA_MAX": "0"}, "IMGSEARCH_INDEX_DELTA_MAX must be at least 1"),
        ({"IMGSEARCH_INDEX_FLAT_MAX_BYTES": "-1"}, "IMGSEARCH_INDEX_FLAT_MAX_BYTES must be at"),
        ({"IMGSEARCH_DATA_DIR": "none"}, "IMGSEARCH_DATA_DIR='none' names no folder"),
    ],
)
def test_out_of_range_numbers_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(environ=env)


def test_an_empty_data_dir_variable_is_unset() -> None:
    """Before: None for a required path, a crash later (`IMGSEARCH_DATA_DIR=` in a shell)."""
    assert Config.load(environ={"IMGSEARCH_DATA_DIR": " "}).data_dir == Config().data_dir


@pytest.mark.parametrize(("raw", "expected"), [("", "default"), (" ", "default"), ("NONE", None)])
def test_an_empty_pretrained_tag_is_unset_and_only_none_means_random(
    raw: str, expected: str | None
) -> None:
    """Before: `IMGSEARCH_PRETRAINED=` (compose's `${VAR:-}`) meant random weights."""
    default = Config().pretrained
    want = default if expected == "default" else expected
    assert Config.load(environ={"IMGSEARCH_PRETRAINED": raw}).pretrained == want
    assert Config.load(environ={}, overrides={"pretrained": raw}).pretrained == want
    assert Config.load(environ={"IMGSEARCH_PRETRAINED": "null"}).pretrained is None


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_token_auto_in_a_data_dir_that_cannot_be_written(tmp_path: Path, kind: str) -> None:
    """Before: a traceback (exit 1); now the data-dir lock's one line (exit 2)."""
    data = tmp_path / "data"
    if kind == "file":
        data.write_text("")
    else:
        data.mkdir()
        data.chmod(0o500)
        if os.access(data, os.W_OK):  # root writes anyway
            pytest.skip("running as root: permissions do not stop writes")
    with pytest.raises(ConfigError, match="cannot be written"):
        with_token(Config(data_dir=data, token="auto"))
