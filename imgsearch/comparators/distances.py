"""Exact squared L2 distances between SIFT descriptors, on the fastest path the CPU has.

OpenCV's SIFT descriptors are integers 0..255 (kept as uint8), so every distance is an
integer, and both paths here compute it exactly: numpy's fp32 BLAS product (every partial sum
stays below 2^24), or, where the CPU multiplies int8 natively (AMX, AVX512-VNNI), an int8
product with int32 sums through torch (`torch._int_mm`, oneDNN's kernels): the descriptors
shifted by -128 fit int8, and a shift moves no distance. Same integers, same matches; the
product 3x faster, a whole match 1.3x (`bench/matching.py`). (A bf16 product would be exact
too, but torch on CPU returns it rounded to bf16.)
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from ..cpu import cpu_flags, torch_threads

log = logging.getLogger(__name__)

# CPU flags (/proc/cpuinfo) of native int8 dot products with int32 sums.
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
# Torch threads per int8 product: the compare pool already runs one candidate per core.
PRODUCT_THREADS = 1


@functools.cache
def int8_native() -> bool:
    """Whether this CPU multiplies int8 natively and torch has the int8 product (read once)."""
    found = sorted(cpu_flags() & INT8_FLAGS)
    try:
        import torch

        available = callable(getattr(torch, "_int_mm", None))
    except ImportError:
        available = False
    log.debug("descriptor product: int8 flags %s, torch._int_mm %s", found, available)
    return bool(found) and available


def ranking_distances(
    query: np.ndarray, candidate: np.ndarray, *, int8: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances (query rows x candidate rows) less each query row's own offset,
    and those offsets (so `matrix + offsets[:, None]` is the distance); exact integers.

    The int8 path is taken for uint8 descriptors where `int8_native()` (or `int8=True`);
    numpy's fp32 product otherwise. Rankings, minima and distances are the same either way.
    """
    use_int8 = int8_native() if int8 is None else int8
    if use_int8 and query.dtype == np.uint8 and candidate.dtype == np.uint8:
        return _int8_distances(query, candidate)
    return _fp32_distances(query, candidate)


def _fp32_distances(query: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = query.astype(np.float32)
    c = candidate.astype(np.float32)
    dist = q @ c.T
    dist *= -2.0
    dist += np.einsum("ij,ij->i", c, c)[None, :]
    return dist, np.einsum("ij,ij->i", q, q)


def _int8_distances(query: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    q = (query ^ 0x80).view(np.int8)  # v - 128, as int8
    c = (candidate ^ 0x80).view(np.int8)
    with torch_threads(PRODUCT_THREADS):
        product = torch._int_mm(torch.from_numpy(q), torch.from_numpy(c).T)
    dist: np.ndarray = product.numpy()
    dist *= -2
    dist += np.einsum("ij,ij->i", c, c, dtype=np.int32)[None, :]
    return dist, np.einsum("ij,ij->i", q, q, dtype=np.int32)
