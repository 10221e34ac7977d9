"""What an add of many URLs costs the daemon beyond the downloads themselves.

    python bench/url_add.py --urls 6000
    python bench/url_add.py --urls 6000 --tree /tmp/before      # another checkout, same run

Serves one small JPEG under --urls distinct URLs from a local aiohttp server (in a thread of
this process), starts a daemon (the bundled efficientnet-lite0: offline) on a new data dir,
and POSTs one add of every URL (waited for). The same bytes under every URL: one image is
embedded and the rest are skips, so what is measured is the add's own loop (downloads,
their hand-off, the bookkeeping), not the model. Reports the add's wall time and the daemon's
CPU seconds during it, with --tree for each tree given, in turns (--rounds). Prints the CPU
model and load; appends one JSON line to bench/out/url_add.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, cpu_model, progress, record  # noqa: E402


def serve_image(ready: threading.Event, port: list[int]) -> None:
    """An aiohttp server of one JPEG at /img/ANYTHING, forever (a daemon thread)."""
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 40)).save(buf, format="JPEG")
    body = buf.getvalue()

    async def image(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{name}", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def one_add(tree: Path, urls: list[str], work: Path) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(dir=work)) / "data"
    flags = ["--model", "efficientnet-lite0", "--download-concurrency", "4"]
    with Daemon(flags, data, tree=tree) as daemon:
        body = json.dumps({"urls": urls}).encode()
        request = urllib.request.Request(
            daemon.url + "/add", body, {"Content-Type": "application/json"}
        )
        cpu, start = daemon.cpu_seconds(), time.monotonic()
        with urllib.request.urlopen(request, timeout=3600) as resp:
            report = json.load(resp)
        wall, cpu = time.monotonic() - start, daemon.cpu_seconds() - cpu
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "added": report["added"],
            "skipped": report["skipped"], "failed": report["failed"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", type=int, default=6000)
    parser.add_argument("--tree", type=Path, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()}")
    ready, port = threading.Event(), []
    threading.Thread(target=serve_image, args=(ready, port), daemon=True).start()
    assert ready.wait(30)
    urls = [f"http://127.0.0.1:{port[0]}/img/{i}.jpg" for i in range(args.urls)]
    trees = [REPO_ROOT, *args.tree]
    results: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
    for round_ in range(args.rounds):
        for tree in trees:
            progress(f"round {round_ + 1}: {len(urls)} URLs, tree {tree}")
            got = one_add(tree, urls, args.work)
            results[str(tree)].append(got)
            print(f"  {tree}: {got}")
    record({"urls": args.urls, "results": results, "load": os.getloadavg()}, "url_add")


if __name__ == "__main__":
    main()
