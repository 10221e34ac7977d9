"""What naming a checkpoint by its content costs at start-up (embedders/identity.py).

A model given as a `--checkpoint` file is named by the SHA-256 of its bytes, cached by (path,
size, mtime_ns). This writes a file of `--mb` MB of random bytes (a ViT-B-32 checkpoint is
~600 MB), then times, best of `--repeat`: the hash from disk (the file dropped from the page
cache with posix_fadvise first, where the file system honours it), the hash from the page
cache, and a start that finds the digest cached (a stat and a small JSON read).

    .venv/bin/python bench/checkpoint_digest.py [--mb 600] [--repeat 3] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import cpu_model

from imgsearch.embedders.identity import checkpoint_digest

CHUNK = 16 << 20


def best_of(repeat: int, run: Callable[[], object], before: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=600, help="checkpoint size in MB (600)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; best is kept (3)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the file")
    args = parser.parse_args(argv)
    print(f"cpu: {cpu_model()} x{os.cpu_count()}; load at start {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="imgsearch-bench-digest-", dir=args.tmp))
    try:
        weights, cache = work / "open_clip_pytorch_model.bin", work / "digests.json"
        with open(weights, "wb") as fh:
            for _ in range(0, args.mb << 20, CHUNK):
                fh.write(os.urandom(CHUNK))
        cold = best_of(
            args.repeat, lambda: checkpoint_digest(weights), lambda: drop_from_page_cache(weights)
        )
        warm = best_of(args.repeat, lambda: checkpoint_digest(weights), lambda: None)
        checkpoint_digest(weights, cache)  # fills the cache
        cached = best_of(args.repeat, lambda: checkpoint_digest(weights, cache), lambda: None)
        size = weights.stat().st_size / 1e6
        print(f"{size:.0f} MB checkpoint, best of {args.repeat}:")
        print(f"  hashed from disk        {cold:7.3f} s  ({size / cold:6.0f} MB/s)")
        print(f"  hashed from page cache  {warm:7.3f} s  ({size / warm:6.0f} MB/s)")
        print(f"  digest found cached     {cached * 1e3:7.3f} ms")
        print(f"load at end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
