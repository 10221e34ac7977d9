"""The Embedder protocol and a shared torch implementation of batching and normalising."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns images into L2-normalised float32 vectors; loaded once, safe to call from threads."""

    model_id: str
    dim: int
    input_size: int

    def prepare(self, image: Image.Image) -> Any:
        """Preprocess one image into a model input (CPU work, run in decode threads)."""
        ...

    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        """Run the model on prepared inputs: float32 [n, dim], rows of unit length."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """prepare + embed_prepared."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """An embedder whose model also has a text tower (CLIP): text queries for image vectors."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts into the image vectors' space: float32 [n, dim], unit rows."""
        ...


def resolve_device(device: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but torch sees no CUDA GPU")
    return device


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return out


class TorchEmbedder:
    """Batched inference under torch.inference_mode for any image model and transform."""

    model_id: str
    dim: int
    input_size: int

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        transform: Callable[[Image.Image], torch.Tensor],
        device: str,
    ) -> None:
        self._forward = forward
        self._transform = transform
        self.device = device

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            x = torch.stack(list(batch)).to(self.device, non_blocking=True)
            out: np.ndarray = self._forward(x).float().cpu().numpy()
        return l2_normalise(out)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared([self.prepare(im) for im in images])
