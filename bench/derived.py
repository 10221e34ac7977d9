"""Derived-file cache: cost per write, read and invalidate as the cache grows.

Compares, in one run on the same payloads, the one cache rule (`imgsearch.derived`: one file
per kind and image, the image mtime in a header, replaced atomically) with the rule thumbnails
used before it (the mtime in the file name, so every write and every invalidation lists the
folder to drop older versions). `--n` images get a thumbnail-sized payload (`--kb` KiB); then
`--ops` random images are re-written (a new mtime), read, and invalidated. Figures are
microseconds per operation, best of `--repeat` rounds; the ratios are old/new.

    .venv/bin/python bench/derived.py [--n 20000] [--ops 500] [--kb 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import cpu_model

from imgsearch.derived import DerivedFiles
from imgsearch.files import write_atomic


class OldRule:
    """The thumbnails' former rule: `<id>-<mtime_ns>.jpg`, older versions found by glob."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, image_id: int, mtime_ns: int, data: bytes) -> None:
        target = self.root / f"{image_id}-{mtime_ns}.jpg"
        write_atomic(target, data)
        for old in self.root.glob(f"{image_id}-*.jpg"):
            if old != target:
                old.unlink(missing_ok=True)

    def read(self, image_id: int, mtime_ns: int) -> bytes | None:
        try:
            return (self.root / f"{image_id}-{mtime_ns}.jpg").read_bytes()
        except FileNotFoundError:
            return None

    def invalidate(self, image_id: int) -> None:
        for old in self.root.glob(f"{image_id}-*.jpg"):
            old.unlink(missing_ok=True)


def per_op_us(fn: Callable[[int], object], ids: Sequence[int], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for image_id in ids:
            fn(image_id)
        best = min(best, time.perf_counter() - start)
    return best / len(ids) * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="images in the cache (20000)")
    parser.add_argument("--ops", type=int, default=500, help="operations timed per kind (500)")
    parser.add_argument("--kb", type=int, default=12, help="payload size in KiB (12)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; best is kept (3)")
    args = parser.parse_args(argv)
    print(f"cpu: {cpu_model()} x{os.cpu_count()}; load at start {os.getloadavg()[0]:.2f}")
    payload = os.urandom(args.kb * 1024)
    ids = random.Random(0).sample(range(args.n), min(args.ops, args.n))
    workdir = Path(tempfile.mkdtemp(prefix="imgsearch-bench-derived-"))
    try:
        new, old = DerivedFiles(workdir / "new"), OldRule(workdir / "old")
        for i in range(args.n):
            new.write("thumbnails/256", i, (1, 1, 1), payload)
            old.write(i, 1, payload)
        rows = {
            "write (new version)": (
                per_op_us(lambda i: old.write(i, 2, payload), ids, args.repeat),
                per_op_us(
                    lambda i: new.write("thumbnails/256", i, (2, 2, 1), payload), ids, args.repeat
                ),
            ),
            "read (hit)": (
                per_op_us(lambda i: old.read(i, 2), ids, args.repeat),
                per_op_us(lambda i: new.read("thumbnails/256", i, (2, 2, 1)), ids, args.repeat),
            ),
            "invalidate": (
                per_op_us(old.invalidate, ids, args.repeat),
                per_op_us(new.invalidate, ids, args.repeat),
            ),
        }
        print(f"{args.n} images, {len(ids)} ops per kind, {args.kb} KiB payloads")
        print(f"{'operation':<22}{'old rule us':>12}{'one rule us':>12}{'old/new':>9}")
        for name, (old_us, new_us) in rows.items():
            print(f"{name:<22}{old_us:>12.1f}{new_us:>12.1f}{old_us / new_us:>9.1f}")
        print(f"load at end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
