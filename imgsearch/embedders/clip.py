"""open_clip models: any architecture and tag, a local checkpoint, or seeded random weights."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import OFFLINE_MODEL
from ..errors import ConfigError
from .base import Preprocess, Runtime, TorchEmbedder, l2_normalise
from .identity import ModelName, model_name_of

log = logging.getLogger(__name__)

RANDOM_SEED = 0
# The keys open_clip needs in a model config (it skips a file without them, without a word).
CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
CAUSE_CHARS = 300  # of a load failure's cause in the one-line message
# open_clip's defaults when a model names no preprocessing of its own.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEmbedder(TorchEmbedder):
    """An open_clip image tower (and text tower, for text queries)."""

    def __init__(
        self,
        model_name: str,
        *,
        pretrained: str | None,
        checkpoint: Path | None,
        model_config: Path | None,
        device: str,
        batch_size: int = 32,
        digest_cache: Path | None = None,
    ) -> None:
        """`digest_cache`: where a checkpoint's SHA-256 is kept between starts (identity.py;
        None: hashed at every start)."""
        import open_clip

        if model_config is not None:
            _register(model_config)
        if checkpoint is not None and not checkpoint.is_file():
            raise ConfigError(f"--checkpoint {checkpoint} is not a file")
        model, transform = _create(model_name, pretrained, checkpoint, device)
        model.eval()
        # The image tower alone: encode_image(x) is visual(x); the text tower stays fp32.
        super().__init__(model.visual, _preprocess(model.visual), device, batch_size=batch_size)
        self.reference_transform = transform  # open_clip's own, for equivalence tests
        self._model = model
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self.dim = int(model.visual.output_dim)
        size = model.visual.image_size
        self.input_size = int(min(size) if isinstance(size, tuple | list) else size)
        name = _name_of(model_name, pretrained, checkpoint, digest_cache)
        self.model_id, self.model_aliases = name.id, name.aliases
        log.info("loaded %s (%d-d) on %s", self.model_id, self.dim, device)

    def use(self, module: Any, precision: str, runtime: Runtime) -> None:
        """Install the image tower in `precision`; the model holds it too (never two copies)."""
        super().use(module, precision, runtime)
        self._model.visual = module

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text queries into the image vectors' space."""
        import torch

        with torch.inference_mode():
            tokens = self._tokenizer(list(texts)).to(self.device)
            out = self._model.encode_text(tokens).float().cpu().numpy()
        return l2_normalise(out)


def _preprocess(visual: Any) -> Preprocess:
    """The model's size, mean, std and interpolation (open_clip's preprocess_cfg)."""
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", visual.image_size)
    side = int(min(size) if isinstance(size, tuple | list) else size)
    mean = tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN))
    std = tuple(float(v) for v in cfg.get("std", OPENAI_STD))
    interpolation = str(cfg.get("interpolation") or "bicubic")
    mode = str(cfg.get("resize_mode") or "shortest")
    rgb_mean, rgb_std = (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
    return Preprocess(side, rgb_mean, rgb_std, interpolation, mode)


def _register(model_config: Path) -> None:
    """Register a model config file with open_clip, checked first: open_clip keeps every path
    it was given and re-reads them all on each registration, so a bad one would break this
    one's and every later one's with a traceback."""
    import open_clip

    if not model_config.is_file():
        raise ConfigError(f"--model-config {model_config} is not a file")
    try:
        cfg = json.loads(model_config.read_bytes())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"--model-config {model_config} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or not all(key in cfg for key in CONFIG_KEYS):
        raise ConfigError(
            f"--model-config {model_config} is not an open_clip model config: it needs the "
            f"keys {', '.join(CONFIG_KEYS)}"
        )
    open_clip.add_model_config(model_config)
    log.info("registered open_clip model %s from %s", model_config.stem, model_config)


def _create(
    model_name: str, pretrained: str | None, checkpoint: Path | None, device: str
) -> tuple[Any, Any]:
    """open_clip.create_model_and_transforms with failures turned into one clear line."""
    import open_clip
    import torch

    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() (a "
            "--model-config registers its file's name, without .json), "
            f"or use --model {OFFLINE_MODEL} (bundled, offline)"
        )
    weights = str(checkpoint) if checkpoint is not None else pretrained
    try:
        if weights is None:
            log.warning(
                "open_clip %s with random weights (seed %d): for tests only",
                model_name,
                RANDOM_SEED,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model, _, transform = open_clip.create_model_and_transforms(
                    model_name, pretrained=None, device=device
                )
        else:
            loaded = _create_loaded(model_name, weights, device)
            model, _, transform = loaded or open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=device
            )
    except Exception as exc:
        raise _load_error(model_name, weights, checkpoint, exc) from None
    return model, transform


def _load_error(
    model_name: str, weights: str | None, checkpoint: Path | None, exc: Exception
) -> ConfigError:
    """One line on why the weights did not load. For a --checkpoint, never the network
    advice, nor torch's suggestion of weights_only=False (running a pickle's code)."""
    text = str(exc)
    if checkpoint is None:
        return ConfigError(
            f"cannot load open_clip {model_name} weights {weights!r}: {_cause(exc)}. "
            "On a machine without internet, pass a local weights file with --checkpoint PATH, "
            f"or use the bundled offline model with --model {OFFLINE_MODEL}"
        )
    if "Error(s) in loading state_dict" in text:  # read, but the tensors are another model's
        details = " ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        return ConfigError(
            f"--checkpoint {checkpoint} does not fit open_clip {model_name} (the weights of "
            f"another model?): {_clipped(details)}"
        )
    return ConfigError(
        f"--checkpoint {checkpoint} is not an open_clip checkpoint (corrupt, truncated or "
        f"another format): {_cause(exc)}"
    )


def _cause(exc: Exception) -> str:
    """The first line of an exception's message (its type where it has none). torch's
    weights-only loader puts advice first and the reason after "WeightsUnpickler error:"."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _clipped(line) if line else type(exc).__name__


def _clipped(text: str) -> str:
    return text if len(text) <= CAUSE_CHARS else text[: CAUSE_CHARS - 3] + "..."


def _create_loaded(model_name: str, weights: str, device: str) -> tuple[Any, Any, Any] | None:
    """open_clip's own create_model_and_transforms for weights that replace every random
    tensor, without drawing those tensors first: random fills are skipped (the tensors are
    NaN until loaded) and the checkpoint is memory-mapped, not read into a copy (a file in
    torch's legacy format, which cannot be mapped, is read). ViT-B-32's start on a 2-core
    Xeon: 6.71 -> 5.38 s (bench/startup.py --checkpoint). None when the weights left a
    tensor unloaded: the caller takes the plain path. A checkpoint that does not fit the
    model fails here as it would there."""
    from open_clip import create_model_and_transforms

    from .weights import SkipRandomInit, memory_mapped_loads, unloaded

    created: tuple[Any, Any, Any]
    with SkipRandomInit():
        try:
            with memory_mapped_loads():
                created = create_model_and_transforms(model_name, pretrained=weights, device=device)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            log.info("%s cannot be memory-mapped (%s): reading it", weights, exc)
            created = create_model_and_transforms(model_name, pretrained=weights, device=device)
    left = unloaded(created[0])
    if left:
        log.warning("%s left %s unloaded; loading it plainly", weights, ", ".join(left[:3]))
        return None
    return created


def _name_of(
    model_name: str, pretrained: str | None, checkpoint: Path | None, cache: Path | None
) -> ModelName:
    """The model's id and aliases (identity.py), a file that cannot be hashed one line."""
    try:
        return model_name_of(model_name, pretrained, checkpoint, cache)
    except OSError as exc:
        weights = checkpoint or pretrained
        raise ConfigError(f"cannot read {weights} to name its weights: {exc}") from None
