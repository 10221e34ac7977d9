"""Configuration: one frozen dataclass, filled from defaults, IMGSEARCH_* variables and flags."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .cpu import native_amx, native_bf16
from .errors import ConfigError
from .index import policy as index_policy

ENV_PREFIX = "IMGSEARCH_"
OFFLINE_MODEL = "efficientnet-lite0"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
AUTO_TOKEN = "auto"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECOMPUTE_MODES = ("auto", "on", "off")
WARM_MODES = ("auto", "on", "off")
# `--precompute auto` computes verification features after each add while the library holds
# fewer images than this: about 170 ms of one core and 200 KB of disk per image (SIFT at
# 640 px plus a thumbnail), so 20k images cost ~1 CPU-hour and ~4 GB (docs/BENCHMARKS.md).
PRECOMPUTE_LIMIT = 20_000
# Whole-number settings and their least value, as a user sets them (a flag or a variable):
# below it they would mean nothing (a negative count) or stop the daemon later, far away.
MINIMA = (
    ("max_image_pixels", 1, "--max-image-pixels"),
    ("precompute_limit", 0, "IMGSEARCH_PRECOMPUTE_LIMIT"),
    ("index_exact_max", 0, "IMGSEARCH_INDEX_EXACT_MAX"),
    ("index_flat_max_bytes", 0, "IMGSEARCH_INDEX_FLAT_MAX_BYTES"),
    ("index_delta_max", 1, "IMGSEARCH_INDEX_DELTA_MAX"),
)


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to start; built once and never mutated."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    checkpoint: Path | None = None
    model_config: Path | None = None
    device: str = "auto"
    # Images per model call; 0 = the size measured for the model and device (embedders).
    batch_size: int = 0
    # Embedding precision: auto = the hardware's native fast type when a self-check agrees.
    precision: str = "auto"
    # Verification features computed in the background after each add (auto: small libraries).
    precompute: str = "auto"
    precompute_limit: int = PRECOMPUTE_LIMIT
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    # Torch threads inside one model call. Half the cores: the daemon runs requests side by
    # side, and OpenMP threads that must wait for busy cores slow a call down many times over.
    threads: int = field(default_factory=lambda: max(1, (os.cpu_count() or 1) // 2))
    max_upload_mb: float = 50.0
    max_image_pixels: int = 150_000_000
    # The vector index: "auto" (exact while small, then IVF; imgsearch/index/policy.py) or
    # "exact" (always brute force). The thresholds are there to be lowered in tests.
    index: str = "auto"
    index_exact_max: int = index_policy.EXACT_MAX
    index_flat_max_bytes: int = index_policy.FLAT_MAX_BYTES
    index_delta_max: int = index_policy.DELTA_MAX
    # An IVF index's lists trained on the vectors less their mean (index/policy.py: quicker
    # searches of 1M strongly clustered vectors, slower at 3M and of embedding-like ones); off.
    index_centred: bool = False
    # recall@10 against exact search that the IVF index's nprobe and re-scoring are tuned for
    # (lower: faster searches that miss more of the true nearest).
    recall: float = index_policy.TARGET_RECALL
    # Read the database file into the page cache after a start, where it fits in the memory
    # available (store/warming.py: the re-scoring reads of searches then skip the disk): auto
    # once the searches' reads are seen to come slowly from the disk, on at once, or off.
    warm_database: str = "auto"
    max_pending_searches: int = 32
    max_pending_adds: int = 8
    # Adding and searching by URL: seconds per download (all of it), downloads at once.
    download_timeout: float = 30.0
    download_concurrency: int = 4
    token: str | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_roots: tuple[Path, ...] = ()
    watch: tuple[Path, ...] = ()
    verbose: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        if self.batch_size < 0:
            raise ConfigError(f"--batch-size must be 0 (auto) or more, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {'|'.join(PRECISIONS)}")
        if self.precompute not in PRECOMPUTE_MODES:
            raise ConfigError(f"--precompute must be one of {'|'.join(PRECOMPUTE_MODES)}")
        if self.warm_database not in WARM_MODES:
            raise ConfigError(f"--warm-database must be one of {'|'.join(WARM_MODES)}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if min(self.max_pending_searches, self.max_pending_adds) < 1:
            raise ConfigError("--max-pending-searches and --max-pending-adds must be at least 1")
        if not self.download_timeout > 0:  # NaN too
            raise ConfigError(f"--download-timeout must be positive, got {self.download_timeout}")
        if self.download_concurrency < 1:
            raise ConfigError(
                f"--download-concurrency must be at least 1, got {self.download_concurrency}"
            )
        if self.index not in ("auto", "exact"):
            raise ConfigError(f"--index must be auto or exact, got {self.index!r}")
        if not 0 < self.recall <= 1:  # NaN too
            raise ConfigError(f"--recall must be over 0 and at most 1, got {self.recall}")
        if not 0 < self.max_upload_mb < math.inf:  # NaN too
            raise ConfigError(
                f"--max-upload-mb must be a positive, finite number, got {self.max_upload_mb}"
            )
        for name, least, said in MINIMA:
            if getattr(self, name) < least:
                raise ConfigError(f"{said} must be at least {least}, got {getattr(self, name)}")
        if self.host not in LOOPBACK_HOSTS and not self.token:
            raise ConfigError(
                f"--host {self.host} lets other machines reach the daemon: it needs a token "
                f"too (--token SECRET, or --token {AUTO_TOKEN} to generate one)"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def index_policy(self) -> index_policy.Policy:
        """The index size thresholds in force."""
        return index_policy.Policy(
            mode=self.index,
            exact_max=self.index_exact_max,
            flat_max_bytes=self.index_flat_max_bytes,
            delta_max=self.index_delta_max,
            target_recall=self.recall,
            train_bf16=self.precision != "fp32" and native_bf16(),
            tree_from=index_policy.NEVER if native_amx() else index_policy.TREE_FROM,
            centred=self.index_centred,
        )

    def resolved(self) -> Config:
        """Return a copy with absolute paths, so nothing depends on the working directory later."""
        return dataclasses.replace(
            self,
            data_dir=self.data_dir.expanduser().resolve(),
            checkpoint=self.checkpoint.expanduser().resolve() if self.checkpoint else None,
            allow_roots=tuple(root.expanduser().resolve() for root in self.allow_roots),
            watch=tuple(folder.expanduser().resolve() for folder in self.watch),
            model_config=self.model_config.expanduser().resolve() if self.model_config else None,
        )

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Config:
        """Defaults, then IMGSEARCH_<FIELD> variables, then non-None overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            # A required path set empty (`IMGSEARCH_DATA_DIR=`, or compose's `${VAR:-}`) is
            # unset, as a shell user means it: the default, not a crash or the working dir. So
            # is an empty pretrained tag: random weights are asked for by name (`none`) only.
            empty = raw is not None and not raw.strip()
            if empty and (str(f.type) == "Path" or f.name == "pretrained"):
                continue
            if raw is not None:
                values[f.name] = _parse(f.name, str(f.type), raw)
        for key, value in (overrides or {}).items():
            if key == "pretrained" and isinstance(value, str) and not value.strip():
                continue  # `--pretrained ""`: as the variable
            if value is not None:
                values[key] = tuple(value) if isinstance(value, list) else value
        if "pretrained" in values and _is_none(values["pretrained"]):
            values["pretrained"] = None
        return cls(**values)


def _is_none(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in {"", "none", "null"}


def _parse(name: str, type_name: str, raw: str) -> Any:
    """Turn an environment string into the field's type ('bool', 'int', 'Path | None', ...)."""
    try:
        if type_name == "bool":
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "Path":  # required: empty is unset (load), "none" is no folder
            if _is_none(raw):
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()}={raw!r} names no folder: unset it for the "
                    "default or give a path"
                )
            return Path(raw)
        if type_name.startswith("Path"):
            return None if _is_none(raw) else Path(raw)
        if type_name == "tuple[Path, ...]":  # a PATH-like list
            return tuple(Path(p) for p in raw.split(os.pathsep) if p)
        if type_name == "tuple[str, ...]":
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type_name}"
        ) from None
