"""Image embedders: the protocol, and the factory that picks one from the config."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from ..config import OFFLINE_MODEL, Config
from ..errors import ConfigError
from .base import Embedder, Runtime, TextEmbedder, TorchEmbedder, resolve_device
from .lanes import Lanes, lane_count, lanes_of
from .precision import PrecisionCheck, choose_precision, default_batch_size, default_tail_batch

log = logging.getLogger(__name__)

__all__ = [
    "Embedder",
    "Lanes",
    "PrecisionCheck",
    "Runtime",
    "TextEmbedder",
    "batch_size_of",
    "check_precision",
    "decode_workers",
    "lanes_of",
    "load_embedder",
    "model_aliases",
    "refuse_weights_options",
    "resolve_device",
    "runtime_stats",
    "tail_batch_of",
]


def load_embedder(config: Config, *, check_later: bool = False) -> Embedder:
    """Build the embedder the config names, in the precision, layout and batch size this
    machine runs best; raises ConfigError with a clear message on failure. `check_later`:
    in fp32 for now, the caller runs `check_precision` (the daemon, after it answers)."""
    if config.model == OFFLINE_MODEL:
        refuse_weights_options(config)
    device = resolve_device(config.device)  # both before anything changes in the process
    import torch

    torch.set_num_threads(config.threads)
    embedder: TorchEmbedder
    if config.model == OFFLINE_MODEL:
        from .cnn import EfficientNetLite0

        embedder, family = EfficientNetLite0(device), "cnn"
    else:
        from .clip import ClipEmbedder
        from .identity import default_digest_cache

        embedder = ClipEmbedder(
            config.model,
            pretrained=config.pretrained,
            checkpoint=config.checkpoint,
            model_config=config.model_config,
            device=device,
            digest_cache=default_digest_cache(),
        )
        family = "clip"
    batch = config.batch_size or default_batch_size(family, device)
    lanes = lane_count(device, config.threads)
    tail = default_tail_batch(family, device)
    embedder.runtime = replace(embedder.runtime, batch_size=batch, lanes=lanes, tail_batch=tail)
    embedder.lanes = Lanes(lanes)
    if not check_later:
        choose_precision(embedder, config.precision)
    out: Embedder = embedder
    return out


def refuse_weights_options(config: Config) -> None:
    """ConfigError where the bundled model is given open_clip's weight options, which it would
    ignore (its weights come with it). A --pretrained equal to the default tag is not one the
    user gave: every Config carries it (and a first run's fallback keeps it); `none` asks for
    no weights, which the bundled model needs none of either."""
    given = []
    if config.checkpoint is not None:
        given.append(f"--checkpoint {config.checkpoint}")
    if config.pretrained is not None and config.pretrained != Config().pretrained:
        given.append(f"--pretrained {config.pretrained}")
    if config.model_config is not None:
        given.append(f"--model-config {config.model_config}")
    if given:
        raise ConfigError(
            f"--model {OFFLINE_MODEL} is the bundled model with its own weights: it takes no "
            f"--checkpoint, --pretrained or --model-config (given: {', '.join(given)})"
        )


def model_aliases(embedder: Embedder) -> tuple[str, ...]:
    """Ids earlier versions gave the embedder's weights (a data dir bound to one is rebound)."""
    aliases = getattr(embedder, "model_aliases", ())
    return tuple(a for a in aliases if isinstance(a, str)) if isinstance(aliases, tuple) else ()


def check_precision(embedder: Embedder, requested: str) -> PrecisionCheck | None:
    """Choose a torch embedder's precision on a thread (None: nothing to choose)."""
    return PrecisionCheck(embedder, requested) if isinstance(embedder, TorchEmbedder) else None


def batch_size_of(embedder: Embedder, fallback: int = 32) -> int:
    """The embedder's measured batch size (an embedder without one: `fallback`)."""
    runtime = getattr(embedder, "runtime", None)
    return runtime.batch_size if isinstance(runtime, Runtime) else fallback


def tail_batch_of(embedder: Embedder) -> int:
    """The smallest batch an add's last files may go in (0: an even share per lane)."""
    runtime = getattr(embedder, "runtime", None)
    return runtime.tail_batch if isinstance(runtime, Runtime) else 0


def decode_workers(embedder: Embedder, configured: int) -> int:
    """Decode threads for indexing: on a GPU the model outruns a few decoders, so every core."""
    if str(getattr(embedder, "device", "cpu")).startswith("cuda"):
        return max(configured, os.cpu_count() or 1)
    return configured


def runtime_stats(embedder: Embedder) -> dict[str, Any]:
    """What /stats shows of how the model runs (empty for embedders without a Runtime)."""
    runtime = getattr(embedder, "runtime", None)
    return runtime.as_json() if isinstance(runtime, Runtime) else {}
