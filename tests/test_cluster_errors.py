"""`imgsearch embed`'s errors before Ray is reached: one line and exit code 2, no traceback.

None of these reaches Ray (tests/test_cluster.py holds the runs on the session's cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgsearch.cluster.plan import MANIFEST, PlanError, load_or_make
from imgsearch.cluster.runner import EmbedOptions, embed
from imgsearch.config import Config
from imgsearch.images import BASE_EXTENSIONS

from .helpers import TINY_MODEL, run_cli

# The embed command's own lane, as tests/test_cluster.py (Ray installed, the tiny model).
pytestmark = pytest.mark.slow

Edit = Callable[[dict[str, Any]], Any]


def _without_dim(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "dim"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: "{cut short", "not JSON"),
        (lambda m: [m], "not a JSON object"),
        (_without_dim, "no dim"),
        (lambda m: {**m, "shard": 2}, "unknown keys shard"),
        (lambda m: {**m, "dim": "4"}, "dim is '4'"),
        (lambda m: {**m, "sources": []}, "sources is []"),
        (lambda m: {**m, "shards": 9}, "5 files in shards of 2 are not 9"),
        (lambda m: {**m, "shard_size": 5, "shards": 1}, "5 files in 3 shards, manifest.json says"),
    ],
)
def test_a_manifest_cut_short_or_edited_by_hand_is_one_plan_error(
    photos: dict[str, Path], tmp_path: Path, edit: Edit, message: str
) -> None:
    """Before: a JSONDecodeError's or a TypeError's traceback, or (counts edited) a run on a
    plan whose shards were not the listing's."""
    folder = [str(next(iter(photos.values())).parent)]
    out = tmp_path / "run"
    load_or_make(out, folder, "m", 4, 2, BASE_EXTENSIONS)
    manifest = json.loads((out / MANIFEST).read_text())
    edited = edit(manifest)
    (out / MANIFEST).write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(PlanError, match="is not the plan imgsearch embed wrote there") as exc:
        load_or_make(out, folder, "m", 4, 2, BASE_EXTENSIONS)
    assert message in exc.value.message and "use another --out" in exc.value.message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": -1}, "--workers must be at least 1, got -1"),
        ({"workers": 0}, "--workers must be at least 1, got 0"),
        ({"cpus_per_worker": 0.0}, "--cpus-per-worker must be more than 0, got 0.0"),
        ({"gpus_per_worker": -1.0}, "--gpus-per-worker must be 0 or more, got -1.0"),
    ],
)
def test_numbers_no_run_can_have_are_plan_errors(
    config: Config, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """Before: `workers=-1` raised deep in Ray Data, and `workers=0` ran as many as the
    cluster holds. (A missing source: refused before anything else was, Ray never starts.)"""
    with pytest.raises(PlanError) as exc:
        embed(EmbedOptions([str(tmp_path / "nope")], tmp_path / "out", config, **options))
    assert exc.value.message == message


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--workers", "-1", "argument --workers: must be a whole number of at least 1, got '-1'"),
        ("--workers", "0", "argument --workers: must be a whole number of at least 1"),
        ("--workers", "1.5", "argument --workers: must be a whole number of at least 1"),
        ("--cpus-per-worker", "0", "argument --cpus-per-worker: must be a number more than 0"),
        ("--cpus-per-worker", "nan", "argument --cpus-per-worker: must be a number more than 0"),
        ("--gpus-per-worker", "-1", "argument --gpus-per-worker: must be 0 or more, got '-1'"),
        ("--shard-size", "0", "argument --shard-size: must be a whole number of at least 1"),
    ],
)
def test_cli_numbers_no_run_can_have_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str, value: str, message: str
) -> None:
    argv = ["embed", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), flag, value]
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "") and message in err


@pytest.mark.parametrize("broken", ["out is a file", "manifest cut short"])
def test_cli_an_out_that_is_a_file_or_holds_a_broken_plan_is_one_line(
    photos: dict[str, Path], tmp_path: Path, tiny_model_config: Path, broken: str
) -> None:
    """Before: a FileExistsError's traceback (mkdir), or a JSONDecodeError's."""
    out = tmp_path / "run"
    if broken == "out is a file":
        out.write_text("a file")
        message = f"--out {out} is a file, not a folder"
    else:
        out.mkdir()
        (out / MANIFEST).write_text('{"format": 1, "mod')
        message = f"{out / MANIFEST} is not the plan imgsearch embed wrote there (not JSON"
    src = next(iter(photos.values())).parent
    cmd = [sys.executable, "-m", "imgsearch", "embed", str(src), "--out", str(out)]
    cmd += ["--model", TINY_MODEL, "--pretrained", "none"]
    cmd += ["--model-config", str(tiny_model_config), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
