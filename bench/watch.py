"""Watched folders on a real daemon: how fast the index follows real file operations.

One daemon (bundled EfficientNet-Lite0) watches an empty folder; then, timing each step until
/stats or /watch shows the index caught up:

1. burst:   N JPEGs copied into the watched folder at once (vs `GET /add` of the same files
            into another folder of the same daemon: images/s of both, and their ratio);
2. move:    the folder of N images renamed inside the watched folder (every image must keep
            its vector: daemon CPU seconds for the move vs for the burst show nothing was
            re-embedded);
3. vanish:  the watched folder moved away (images marked missing), then moved back (restored).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/watch.py [--images 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Daemon, generate_jpegs, progress

POLL = 0.05


def until(what: str, check: Callable[[], bool], timeout: float = 1800.0) -> float:
    """Seconds until `check()` holds."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(what)
        time.sleep(POLL)
    return time.perf_counter() - start


def run(images: int, size: tuple[int, int]) -> dict[str, Any]:
    source = generate_jpegs(images, size=size)
    files = sorted(source.glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="imgsearch-watch-") as tmp:
        root = Path(tmp) / "watched"
        (root / "burst").mkdir(parents=True)
        added = Path(tmp) / "added"
        shutil.copytree(source, added)
        flags = ["--model", "efficientnet-lite0", "--watch", str(root)]
        with Daemon(flags, Path(tmp) / "data") as daemon:

            def stats() -> dict[str, Any]:
                return dict(daemon.get("/stats"))

            def watch() -> dict[str, Any]:
                return dict(daemon.get("/watch")["watches"][0])

            until("watching", lambda: watch()["state"] == "watching")
            progress("baseline: GET /add of the same files")
            cpu0, start = daemon.cpu_seconds(), time.perf_counter()
            daemon.get("/add?" + urllib.parse.urlencode({"image": str(added)}))
            add_s, add_cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu0

            progress(f"burst: copying {images} files into the watched folder")
            cpu0, start = daemon.cpu_seconds(), time.perf_counter()
            for f in files:
                shutil.copy2(f, root / "burst" / f.name)
            copied_s = time.perf_counter() - start
            until("burst indexed", lambda: stats()["images"] == 2 * images)
            burst_s = time.perf_counter() - start
            burst_cpu = daemon.cpu_seconds() - cpu0

            progress("move: renaming the folder")
            cpu0, start = daemon.cpu_seconds(), time.perf_counter()
            os.rename(root / "burst", root / "renamed")
            move_s = until("moves followed", lambda: watch()["moved"] == images)
            move_cpu = daemon.cpu_seconds() - cpu0
            assert stats()["images"] == 2 * images

            progress("vanish: moving the watched folder away, then back")
            away = Path(tmp) / "unplugged"
            start = time.perf_counter()
            os.rename(root, away)
            gone_s = until("marked missing", lambda: stats()["missing"] == images)
            start = time.perf_counter()
            os.rename(away, root)
            back_s = until("restored", lambda: stats()["missing"] == 0)
            assert stats()["images"] == 2 * images and watch()["restored"] == images
            until("watching again", lambda: watch()["state"] == "watching")
    return {
        "images": images,
        "size": f"{size[0]}x{size[1]}",
        "load_avg": os.getloadavg(),
        "add": {"seconds": add_s, "images_per_s": images / add_s, "cpu_s": add_cpu},
        "burst": {
            "seconds": burst_s,
            "copy_seconds": copied_s,
            "images_per_s": images / burst_s,
            "cpu_s": burst_cpu,
        },
        "burst_vs_add": (images / burst_s) / (images / add_s),
        "move": {"seconds": move_s, "cpu_s": move_cpu, "cpu_vs_burst": move_cpu / burst_cpu},
        "vanish": {"missing_after_s": gone_s, "restored_after_s": back_s},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.images, (args.width, args.height))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
