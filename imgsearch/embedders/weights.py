"""Building a torch module whose weights come from a file, without drawing random ones first.

A module's constructor draws every weight at random only for the checkpoint to overwrite them
all (ViT-B-32 from a checkpoint: 1.44 s the plain way, 0.64 s of it the random fills; 0.46 s
this way: bench/model_load.py). Under `SkipRandomInit` the random fills become NaN fills
instead, and `unloaded` then names any tensor the checkpoint did not replace, so a
caller can fall back to the plain path rather than serve garbage weights.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.utils.serialization
from torch.overrides import TorchFunctionMode

# torch's in-place random fills and torch.nn.init's random initialisers, by name: a mode sees
# nn.init's functions themselves (they dispatch through __torch_function__) and the tensor
# methods they and the modules call.
RANDOM_FILLS = frozenset(
    {
        "uniform_",
        "normal_",
        "trunc_normal_",
        "random_",
        "bernoulli_",
        "exponential_",
        "geometric_",
        "cauchy_",
        "log_normal_",
        "orthogonal_",
        "sparse_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
    }
)


class SkipRandomInit(TorchFunctionMode):
    """Random fills of floating-point tensors become NaN fills, on this thread only (torch
    function modes are thread-local). Everything else a constructor computes (masks,
    constants, buffers that are not saved) is computed as usual."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in RANDOM_FILLS:
            tensor = args[0] if args else kwargs["tensor"]
            if tensor.is_floating_point():  # NaN has no integer form: those are drawn
                with torch.no_grad():
                    return tensor.fill_(float("nan"))
        return func(*args, **kwargs)


def memory_mapped_loads() -> AbstractContextManager[Any]:
    """torch.load maps zip checkpoints instead of reading them into a copy (the weights are
    copied once, into the module). torch's loader config: process-wide while it lasts, and
    a checkpoint that cannot be mapped makes torch.load fail, not load wrongly."""
    config: Any = torch.utils.serialization.config  # a torch config module: untyped
    patch: AbstractContextManager[Any] = config.patch({"load.mmap": True})
    return patch


def unloaded(module: torch.nn.Module) -> list[str]:
    """Names of `module`'s floating-point parameters and buffers that hold NaN: under
    SkipRandomInit, those no checkpoint replaced."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    with torch.no_grad():
        return [n for n, t in tensors if t.is_floating_point() and bool(t.isnan().any())]
