"""Image embedders: the protocol, and the factory that picks one from the config."""

from __future__ import annotations

import logging

from ..config import OFFLINE_MODEL, Config
from .base import Embedder, TextEmbedder, resolve_device

log = logging.getLogger(__name__)

__all__ = ["Embedder", "TextEmbedder", "load_embedder", "resolve_device"]


def load_embedder(config: Config) -> Embedder:
    """Build the embedder the config names; raises ConfigError with a clear message on failure."""
    device = resolve_device(config.device)
    import torch

    torch.set_num_threads(config.threads)
    if config.model == OFFLINE_MODEL:
        from .cnn import EfficientNetLite0

        return EfficientNetLite0(device)
    from .clip import ClipEmbedder

    return ClipEmbedder(
        config.model,
        pretrained=config.pretrained,
        checkpoint=config.checkpoint,
        model_config=config.model_config,
        device=device,
    )
