"""Precision per machine: the fastest the hardware runs natively, kept only when a start-up
self-check on real photos agrees with fp32 (so vectors of either precision stay comparable)."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from PIL import Image

from ..config import PRECISIONS
from ..cpu import BF16_FLAGS, cpu_flags
from ..errors import ConfigError
from .base import DTYPES, Runtime, TorchEmbedder

log = logging.getLogger(__name__)

# Every self-check photo must keep at least this cosine to its fp32 vector. bf16 weights give
# 0.99995 on ViT-B-32. The issue asked for 0.995, but EfficientNet-Lite0 in bf16 (its batch
# norms folded) passed that at 0.998 and still moved one query's original from rank 1 to 2 in
# bench/copydetect.py (docs/BENCHMARKS.md, the Intel AMX machine): a ranking moves above 0.995.
MIN_COSINE = 0.999
# Real photos shipped inside scikit-image (no download), as the self-check's inputs.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse")
SAMPLE_SIDE = 256
# Images per model call, per model family and device, from `bench/ingest.py --batch-sweep`:
# on CPU small batches keep activations in cache (Lite0: 8 is 1.8x faster than 32).
BATCH_SIZES = {
    ("cnn", "cpu"): 8,
    ("clip", "cpu"): 16,
    ("cnn", "cuda"): 128,
    ("clip", "cuda"): 128,
}
# How small an add's last batches may get, so the model calls left after the last decode are
# short and side by side (ingest/core.py). The CNN's cost per image hardly depends on the
# batch size, so it goes down to 1 (12 MP add: +10%); ViT-B-32 in bf16 costs ~1.5x per image
# in small batches, which loses more than the tail gains, so it keeps an even share per lane.
TAIL_BATCHES = {("cnn", "cpu"): 1}


def native_precision(device: str, flags: frozenset[str]) -> tuple[str, str]:
    """What `auto` tries on this hardware, and why."""
    if device.startswith("cuda"):
        return "fp16", "CUDA runs fp16 natively"
    found = sorted(flags & BF16_FLAGS)
    if found:
        return "bf16", f"CPU has {', '.join(found)}"
    return "fp32", "CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)"


def emulated(precision: str, device: str, flags: frozenset[str]) -> str | None:
    """Why an explicit `precision` is not native on this hardware (torch then emulates it,
    several times slower than fp32: 5-16x in a review's measurements on this project's
    2-core Xeon), or None where it is. The same facts as `native_precision` goes by: the
    CPU's bf16 flags, fp16 never on a CPU (auto never picks it there); a GPU's are not
    judged here."""
    if device.split(":")[0] != "cpu" or precision not in DTYPES or precision == "fp32":
        return None
    if precision == "bf16" and flags & BF16_FLAGS:
        return None
    missing = "no avx512_bf16 or amx_bf16 flag" if precision == "bf16" else "only CUDA runs it"
    return f"{precision} is not native on this CPU ({missing}): emulated, several times slower"


def default_batch_size(family: str, device: str) -> int:
    """The measured batch size for a model family ('cnn' or 'clip') on a device."""
    return BATCH_SIZES.get((family, "cuda" if device.startswith("cuda") else "cpu"), 32)


def default_tail_batch(family: str, device: str) -> int:
    """The smallest tail batch for a model family on a device (0: no shrinking)."""
    return TAIL_BATCHES.get((family, "cuda" if device.startswith("cuda") else "cpu"), 0)


def sample_images(side: int = SAMPLE_SIDE) -> list[Image.Image]:
    """scikit-image's bundled photos, RGB, longer side `side`."""
    from skimage import data

    out = []
    for name in SAMPLE_PHOTOS:
        arr = np.asarray(getattr(data, name)())
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((side, side))
        out.append(img)
    return out


def self_check(
    embedder: TorchEmbedder, precision: str, images: Sequence[Image.Image]
) -> tuple[np.ndarray, object]:
    """Cosines of each image's `precision` vector to its fp32 one, and the converted module."""
    import torch

    prepared = [embedder.prepare(im) for im in images]
    reference = embedder.embed_with(embedder.module, torch.float32, prepared)
    dtype = getattr(torch, DTYPES[precision])
    fast = copy.deepcopy(embedder.module).to(dtype=dtype)
    vectors = embedder.embed_with(fast, dtype, prepared)
    cosines: np.ndarray = np.einsum("ij,ij->i", reference, vectors)
    return cosines, fast


def choose_precision(
    embedder: TorchEmbedder,
    requested: str,
    *,
    flags: frozenset[str] | None = None,
    threshold: float = MIN_COSINE,
    images: Sequence[Image.Image] | None = None,
) -> Runtime:
    """Set the embedder's precision: `auto` keeps the native fast path only when every
    self-check cosine is >= threshold; fp32 skips the check; an explicit bf16/fp16 is kept
    with a warning when it fails. Returns (and installs) the embedder's new Runtime."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    runtime = embedder.runtime
    if requested == "fp32":
        return _install(embedder, embedder.module, replace(runtime, reason="asked for fp32"))
    flags = cpu_flags() if flags is None else flags
    target, why = requested, "asked for"
    if requested == "auto":
        target, why = native_precision(embedder.device, flags)
        if target == "fp32":
            return _install(embedder, embedder.module, replace(runtime, reason=why))
    elif slow := emulated(requested, embedder.device, flags):  # run as asked, but say so
        why = f"asked for, but {slow} than fp32 (--precision auto picks what runs natively)"
        log.warning("--precision %s: %s", requested, why)
    try:
        cosines, fast = self_check(embedder, target, images or sample_images())
    except Exception as exc:  # an op without a kernel in that dtype on this device
        reason = f"{target} failed on {embedder.device} ({exc}); using fp32"
        log.warning("precision self-check: %s", reason)
        return _install(embedder, embedder.module, replace(runtime, reason=reason))
    worst = float(cosines.min())
    figures = ", ".join(f"{c:.5f}" for c in cosines)
    log.info("precision self-check, %s vs fp32: cosines %s", target, figures)
    if worst >= threshold or requested != "auto":
        if worst < threshold:
            log.warning("%s kept as asked; worst cosine %.5f < %.3f", target, worst, threshold)
        verdict = "passed" if worst >= threshold else "failed, kept as asked"
        done = replace(runtime, precision=target, worst_cosine=worst, reason=f"{why}; {verdict}")
        return _install(embedder, fast, done)
    reason = f"{why}, but {target}'s worst cosine to fp32 was {worst:.5f} < {threshold}; using fp32"
    log.warning("precision self-check: %s", reason)
    return _install(embedder, embedder.module, replace(runtime, worst_cosine=worst, reason=reason))


def _install(embedder: TorchEmbedder, module: object, runtime: Runtime) -> Runtime:
    import torch

    assert isinstance(module, torch.nn.Module)
    runtime = replace(runtime, checking=False)
    embedder.use(module, runtime.precision, runtime)
    log.info(
        "embedding in %s, batch %d%s (%s)",
        runtime.precision,
        runtime.batch_size,
        ", channels_last" if runtime.channels_last else "",
        runtime.reason,
    )
    return runtime


class PrecisionCheck:
    """`choose_precision` on a thread, so the daemon answers while it runs (ViT-B-32's check
    embeds 7 photos twice: 1.6 s on a warm machine, 5 s with a cold page cache). Image
    embeddings wait for it, so every stored vector comes from the engine it chose; searches
    by vector, /stats and removals do not. A check that fails for any reason leaves fp32."""

    def __init__(self, embedder: TorchEmbedder, requested: str) -> None:
        self._embedder = embedder
        self._requested = requested
        embedder.hold(replace(embedder.runtime, checking=True, reason="self-check running"))
        self._thread = threading.Thread(target=self._run, name="precision-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            choose_precision(self._embedder, self._requested)
        except BaseException as exc:  # never leave image embeddings waiting
            reason = f"self-check failed ({exc}); using fp32"
            log.exception("precision self-check: %s", reason)
            done = replace(self._embedder.runtime, precision="fp32", reason=reason)
            _install(self._embedder, self._embedder.module, done)
        log.info("precision chosen in %.1fs after the model loaded", time.monotonic() - started)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the check to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
