"""JPEG decoding paths at model and working size: Pillow draft mode (what imgsearch uses) vs
OpenCV's reduced decode (IMREAD_REDUCED_COLOR_*), and a full-size Pillow decode for scale.

CPU ms per image of this thread (steady on a shared machine), on generated 12 MP phone-size
JPEGs from bench/_common.py. A faster path is adopted only if it wins clearly here *and* keeps
EXIF orientation, CMYK, 16-bit and bad-file handling (imgsearch/images.py).

    .venv/bin/python bench/decode.py [--images 8]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from _common import generate_jpegs
from PIL import Image

from imgsearch.images import decode

PATHS = {224: cv2.IMREAD_REDUCED_COLOR_8, 640: cv2.IMREAD_REDUCED_COLOR_4}


def cpu_ms(fn: Callable[[bytes], object], blobs: Sequence[bytes]) -> float:
    fn(blobs[0])  # warm-up
    start = time.thread_time()
    for blob in blobs:
        fn(blob)
    return (time.thread_time() - start) * 1000 / len(blobs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)
    folder = generate_jpegs(args.images)
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[: args.images]]
    load = os.getloadavg()[0]
    print(f"JPEG decode, CPU ms per 12 MP image ({len(blobs)} images); load average {load:.1f}")
    for side, flag in PATHS.items():
        pil = cpu_ms(lambda b, s=side: decode(b, min_side=s, max_pixels=10**9), blobs)
        ocv = cpu_ms(lambda b, f=flag: cv2.imdecode(np.frombuffer(b, np.uint8), f), blobs)
        print(f"  shorter side >= {side}: Pillow draft {pil:.1f}, OpenCV reduced {ocv:.1f}")
    full = cpu_ms(lambda b: Image.open(io.BytesIO(b)).load(), blobs[:3])
    print(f"  full-size Pillow decode: {full:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
