"""Print what torch sees of CUDA, and which device imgsearch would use.

Run: .venv/bin/python test_cuda.py   (or: make venv && .venv/bin/python test_cuda.py)
"""

from __future__ import annotations

import sys

import torch

from imgsearch.embedders import resolve_device


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
    print(f"threads       {torch.get_num_threads()} CPU threads for inference")
    print(f"imgsearch     --device auto -> {resolve_device('auto')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
