"""Print what torch sees of CUDA, which device imgsearch would use, and a tiny GPU embed rate.

Run: .venv/bin/python test_cuda.py   (or: make venv && .venv/bin/python test_cuda.py)
Without CUDA it prints what it found and skips the GPU embed (exit 0).
"""

from __future__ import annotations

import sys
import time

import torch

from imgsearch.embedders import resolve_device, runtime_stats

EMBED_IMAGES = 256


def gpu_embed_rate() -> None:
    """The bundled model on cuda in fp16 (the `auto` choice there), uint8 inputs from pinned
    host memory: a self-check against fp32, then images/s over a few batches."""
    from imgsearch.embedders.cnn import EfficientNetLite0
    from imgsearch.embedders.precision import choose_precision, sample_images

    embedder = EfficientNetLite0("cuda", batch_size=128)
    runtime = choose_precision(embedder, "auto")
    print(f"  embedder    {runtime_stats(embedder)}")
    images = sample_images()
    prepared = [embedder.prepare(images[i % len(images)]) for i in range(EMBED_IMAGES)]
    embedder.embed_prepared(prepared[: runtime.batch_size])  # warm-up (cuDNN autotune)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, EMBED_IMAGES, runtime.batch_size):
        vectors = embedder.embed_prepared(prepared[i : i + runtime.batch_size])
    torch.cuda.synchronize()
    rate = EMBED_IMAGES / (time.perf_counter() - start)
    print(f"  embed ok    {vectors.shape[1]}-d unit vectors, {rate:.0f} images/s (model only)")


def main() -> int:
    print(f"python        {sys.version.split()[0]}")
    print(f"torch         {torch.__version__}")
    print(f"built for     CUDA {torch.version.cuda or 'none (CPU-only build)'}")
    available = torch.cuda.is_available()
    print(f"cuda usable   {available}")
    if available:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            mem = props.total_memory / 2**30
            cap = f"{props.major}.{props.minor}"
            print(f"  cuda:{i}      {props.name}, {mem:.1f} GiB, capability {cap}")
        x = torch.randn(256, 256, device="cuda")
        print(f"  matmul ok   {bool(torch.isfinite(x @ x).all())}")
        gpu_embed_rate()
    else:
        print("  GPU embed   skipped: no CUDA device")
    print(f"threads       {torch.get_num_threads()} CPU threads for inference")
    print(f"imgsearch     --device auto -> {resolve_device('auto')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
