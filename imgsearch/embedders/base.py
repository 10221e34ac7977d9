"""The Embedder protocol and a shared torch implementation of batching and normalising."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .lanes import Lanes

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Inputs are prepared as uint8 HxWx3 arrays and normalised on the whole batch, in torch.
RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}
# The torch device types the embedders run on (torch.device knows more: xpu, meta, ...).
DEVICE_TYPES = ("cpu", "cuda", "mps")
# Pillow first box-reduces by an integer factor while the image stays this many times the
# target, then resamples once: one pass, about as sharp as a full-size bicubic resize.
REDUCING_GAP = 2.0


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
    """The torch device to run on: 'auto' means CUDA when torch sees a GPU, else CPU; any
    other name is checked here (in any case), so a wrong one is one line, not a traceback
    from deep inside the model's load."""
    import torch

    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise ConfigError(
            f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
        )
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"--device {device} asked for, but torch sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"--device {device} asked for, but torch sees {count} CUDA GPU(s): cuda:0 to "
                f"cuda:{count - 1}"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device} asked for, but this torch has no MPS (Apple GPU)")
    return str(parsed)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return out


@dataclass(frozen=True)
class Preprocess:
    """Fit the image to size x size, then (x/255 - mean) / std on the batch.

    `mode` as open_clip's resize_mode: "shortest" resizes the shorter side and centre-crops,
    "squash" resizes both sides, "longest" resizes the longer side and pads with black.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    mode: str = "shortest"

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One reducing resize straight to the model's input: uint8 size x size x 3."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        resample = RESAMPLE.get(self.interpolation, Image.Resampling.BICUBIC)
        if self.mode == "longest":
            scale = self.size / max(width, height)
            fit = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = image.resize(fit, resample, reducing_gap=REDUCING_GAP)
            canvas = Image.new("RGB", (self.size, self.size))
            canvas.paste(small, ((self.size - fit[0]) // 2, (self.size - fit[1]) // 2))
            return np.asarray(canvas, dtype=np.uint8)
        box = (0.0, 0.0, float(width), float(height))
        if self.mode != "squash":
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            box = (left, top, left + side, top + side)
        out = image.resize((self.size, self.size), resample, box=box, reducing_gap=REDUCING_GAP)
        return np.asarray(out, dtype=np.uint8)


@dataclass(frozen=True)
class Runtime:
    """How the model runs: its precision, channels_last layout and batch size, and the
    worst cosine to fp32 the start-up self-check measured (None: not checked)."""

    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 32
    worst_cosine: float | None = None
    reason: str = "default"
    lanes: int = 1  # model calls side by side for ingest batches (embedders/lanes.py)
    # The smallest batch an add's last files may go in (0: an even share per lane, no less).
    tail_batch: int = 0
    # The self-check runs after start-up (embedders/precision.py): image embeddings wait for it.
    checking: bool = False

    def as_json(self) -> dict[str, Any]:
        worst = None if self.worst_cosine is None else round(self.worst_cosine, 6)
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "batch_size": self.batch_size,
            "self_check_worst_cosine": worst,
            "precision_reason": self.reason,
            "model_lanes": self.lanes,
            "tail_batch": self.tail_batch,
            "precision_checking": self.checking,
        }


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class TorchEmbedder:
    """Batched inference under torch.inference_mode for an image module and its preprocessing.

    Inputs are uint8 arrays (cheap to make in decode threads, 4x smaller than float); the
    batch is converted, normalised and laid out (channels_last for CNNs) in one torch pass.
    """

    model_id: str
    dim: int
    input_size: int
    model_aliases: tuple[str, ...] = ()  # earlier ids of these weights (identity.py)

    def __init__(
        self,
        module: Any,
        preprocess: Preprocess,
        device: str,
        *,
        channels_last: bool = False,
        batch_size: int = 32,
    ) -> None:
        import torch

        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._engine: tuple[Any, torch.dtype] = (module, torch.float32)
        # Set unless a precision self-check is choosing the engine (`hold` / `use`).
        self._ready = threading.Event()
        self._ready.set()
        self.preprocess = preprocess
        self.device = device
        self.runtime = Runtime(channels_last=channels_last, batch_size=batch_size)
        self.lanes = Lanes(1)
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self._scale = (1.0 / (255.0 * std)).to(device)
        self._shift = (-mean / std).to(device)

    @property
    def batch_size(self) -> int:
        return self.runtime.batch_size

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.preprocess(image)

    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        self._ready.wait()  # every stored vector comes from the engine the check chose
        module, dtype = self._engine  # one consistent pair, even while `use` swaps it
        return self.embed_with(module, dtype, batch)

    def embed_with(self, module: Any, dtype: torch.dtype, batch: Sequence[Any]) -> np.ndarray:
        """Run `module` in `dtype` on prepared inputs: float32 unit rows."""
        import torch

        if not len(batch):
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out: np.ndarray = module(self._tensor(batch, dtype)).float().cpu().numpy()
        return l2_normalise(out)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared([self.prepare(im) for im in images])

    @property
    def module(self) -> Any:
        """The torch module in use (fp32 until `use` installs another)."""
        return self._engine[0]

    def hold(self, runtime: Runtime) -> None:
        """Make image embeddings wait until the next `use` (a self-check is choosing)."""
        self.runtime = runtime
        self._ready.clear()

    def use(self, module: Any, precision: str, runtime: Runtime) -> None:
        """Install a module converted to `precision`, with one assignment; releases `hold`."""
        import torch

        self.runtime = runtime
        self._engine = (module, getattr(torch, DTYPES[precision]))
        self._ready.set()

    def _tensor(self, batch: Sequence[Any], dtype: torch.dtype) -> torch.Tensor:
        """uint8 NHWC arrays -> normalised NCHW on the device (channels_last memory if asked)."""
        import torch

        host = torch.from_numpy(np.stack([np.asarray(b, dtype=np.uint8) for b in batch]))
        if self.device.startswith("cuda"):
            host = host.pin_memory()  # lets the copy below run asynchronously
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = x * self._scale + self._shift
        layout = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        return x.to(dtype=dtype, memory_format=layout)
