"""Which model a daemon starts with: the configured one, or the bundled one on a first run
where the default CLIP weights cannot be had (no network and not cached).

Decided before any download is tried, in well under a second: the data dir's bound model
(read-only), the Hugging Face cache, and a short connect probe to the hub. When the weights
cannot be had, the hub is put in offline mode, so a load that must fail fails at once instead
of retrying for a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sqlite3
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..config import OFFLINE_MODEL, Config

log = logging.getLogger(__name__)

DB_FILE = "imgsearch.sqlite3"  # catalog.DB_FILE (not imported: that would pull in FAISS)
HUB = "https://huggingface.co"
PROBE_TIMEOUT = 3.0  # seconds for DNS plus TCP connect to the hub (or the proxy)
OFFLINE_WORDS = frozenset({"1", "true", "yes", "on"})
NOTICE = (
    "No network and no cached copy of the default CLIP weights ({weights}): this daemon uses "
    "the bundled offline model " + OFFLINE_MODEL + " (image search only, no text search). "
    "This data dir stays bound to it. To switch to CLIP later, start with a new --data-dir "
    "while online (the weights download once) or with --checkpoint PATH to a local weights file."
)


@dataclass(frozen=True)
class ModelChoice:
    """The config to load the model from, and a notice for users when it is a fallback."""

    config: Config
    notice: str | None = None


def choose_model(config: Config, *, fallback: bool = True) -> ModelChoice:
    """The model to start with. With `fallback` (no model flag or variable was given), the
    default model may be replaced by the bundled one; an explicit choice never is."""
    default = Config()
    is_default = fallback and (config.model, config.pretrained, config.checkpoint) == (
        default.model,
        default.pretrained,
        None,
    )
    if config.checkpoint is not None or config.pretrained is None or config.model == OFFLINE_MODEL:
        return ModelChoice(config)
    offline = _offline()
    if offline:
        go_offline()  # a cached copy loads without retrying the network; a missing one fails
    bound = bound_model(config.data_dir)
    weights = f"open_clip {config.model}/{config.pretrained}"
    if is_default and bound is not None and bound.startswith(OFFLINE_MODEL):
        return _fallback(config, weights)  # bound to the bundled model by an earlier first run
    if not offline or weights_cached(config.model, config.pretrained):
        return ModelChoice(config)
    if is_default and bound is None:
        return _fallback(config, weights)
    return ModelChoice(config)  # an explicit model, or a data dir bound to CLIP: fail fast


def _fallback(config: Config, weights: str) -> ModelChoice:
    notice = NOTICE.format(weights=weights)
    bar = "!" * 78
    log.warning("\n%s\n%s\n%s", bar, notice, bar)
    # Without a --model-config too: one registered for CLIP is nothing to the bundled model,
    # which refuses one given (load_embedder).
    bundled = dataclasses.replace(config, model=OFFLINE_MODEL, model_config=None)
    return ModelChoice(bundled, notice)


def bound_model(data_dir: Path) -> str | None:
    """The model a data dir's vectors belong to, or None for a new one (read-only)."""
    db = data_dir / DB_FILE
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='model'").fetchone()
    except sqlite3.Error as exc:
        log.debug("cannot read the model of %s: %s", db, exc)
        return None
    return None if row is None else str(row[0])


def weights_cached(model: str, pretrained: str) -> bool:
    """Whether open_clip's weights for model/tag are in the Hugging Face cache already."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from open_clip import pretrained as registry

    cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    repo = str(cfg.get("hf_hub", "")).strip("/")
    if not repo:
        return False
    names = [registry.HF_WEIGHTS_NAME, getattr(registry, "HF_SAFE_WEIGHTS_NAME", "")]
    if "/" in repo.split("/", 1)[-1]:  # "org/repo/file.bin"
        repo, name = repo.rsplit("/", 1)
        names = [name]
    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names if n)


def _offline() -> bool:
    word = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return word.strip().lower() in OFFLINE_WORDS or not hub_reachable()


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub (or the https proxy) opens within `timeout` s."""
    url = urllib.request.getproxies().get("https") or os.environ.get("HF_ENDPOINT") or HUB
    parts = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError as exc:
            log.debug("the hub %s:%d is not reachable: %s", host, port, exc)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def go_offline() -> None:
    """Put the Hugging Face hub client in offline mode, now and for later imports."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
