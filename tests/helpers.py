"""Plain helpers for tests: sample photos, image bytes, free ports, the tiny model's config,
a daemon subprocess, the OpenAPI response check, cone-shaped unit vectors like embeddings,
a small file system to fill, a script run where file permissions bind, and an ingester for
in-process imports (test modules import only from here)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_schema_validator import OAS30Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from skimage import data as skdata

from imgsearch.catalog import Catalog
from imgsearch.comparators import Picture, Score
from imgsearch.embedders import Embedder
from imgsearch.images import BASE_EXTENSIONS
from imgsearch.ingest import Ingester
from imgsearch.store import FileFacts, NewImage

TINY_MODEL = "imgsearch-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
)

DOC_URI = "urn:imgsearch:openapi"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's, for the browser tests
TOKEN = "s3cret"  # the browser tests' daemon token

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def photo(name: str, size: int = 320) -> Image.Image:
    """A real sample photo from scikit-image, RGB, shorter side `size`."""
    arr = np.asarray(getattr(skdata, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((size * 4, size))
    return img


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


async def get_json(
    client: TestClient[web.Request, web.Application], path: str, status: int = 200, **params: Any
) -> Any:
    """GET with query parameters; check the status and return the JSON body."""
    resp = await client.get(path, params=params)
    body = await resp.json()
    assert resp.status == status, body
    return body


class Brightness:
    """A third-party style comparator plugin: mean brightness difference."""

    name = "brightness"
    description = "Mean brightness difference."
    raw_meaning = "absolute difference of mean grey levels, 0-255; lower is more similar"

    def features(self, picture: Picture) -> float:
        return float(picture.gray.mean())

    def compare(self, query: float, candidate: float) -> Score:
        raw = abs(query - candidate)
        return Score(raw, 1.0 - raw / 255.0)


STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 120.0  # SIGTERM to exit on a loaded machine (the <= 10 s goal: bench/scale.py)


class Daemon:
    """One `python -m imgsearch serve` subprocess."""

    def __init__(
        self,
        data_dir: Path,
        model_config: Path,
        *extra: str,
        launch: Sequence[str] = ("-m", "imgsearch"),
    ) -> None:
        """`launch`: how Python runs imgsearch (`-c` and a script: one that injects a fault)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, *launch, "serve", "--port", str(self.port)]
        args += ["--data-dir", str(data_dir), "--model", TINY_MODEL, "--pretrained", "none"]
        args += ["--model-config", str(model_config), *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        # A file, not a pipe: a daemon that logs a lot can never block on a full pipe.
        self.log = data_dir.parent / f"daemon-{self.port}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.output()}")
            try:
                if self.get("/health") == {"ok": True}:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("daemon did not become ready")

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.load(resp)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` and wait for the exit (how long it takes is bench/'s to measure); one that
        has not exited in STOP_TIMEOUT is killed, reaped, and fails the test."""
        self.proc.send_signal(sig)
        reap(self.proc, self.log)

    def output(self) -> str:
        return self.log.read_text()


def reap(proc: subprocess.Popen[bytes], log: Path, *, fail: bool = True) -> None:
    """Wait for a signalled daemon to exit; kill and reap one still there after STOP_TIMEOUT
    (no process outlives the test) and, with `fail`, fail with its log."""
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        if not fail:
            return
        output = log.read_text()
        raise AssertionError(f"the daemon did not exit when signalled:\n{output}") from None


@contextlib.contextmanager
def running(data_dir: Path, model_config: Path, *extra: str) -> Iterator[Daemon]:
    """A ready Daemon for a `with` block (e.g. a module-scoped fixture); killed and reaped after."""
    d = Daemon(data_dir, model_config, *extra)
    try:
        d.wait_ready()
        yield d
    finally:
        d.proc.kill()
        d.proc.wait()


def start(daemons: list[Daemon], data_dir: Path, model_config: Path, *extra: str) -> Daemon:
    """A Daemon, recorded in `daemons` (the conftest fixture): it is killed after the test."""
    d = Daemon(data_dir, model_config, *extra)
    daemons.append(d)
    return d


def check_response(doc: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """Validate a JSON body against what the document says `method path` answers with `status`."""
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered undocumented {status}: {body}"
    ref = responses[str(status)].get("$ref", "")
    response = (
        doc["components"]["responses"][ref.rsplit("/", 1)[-1]] if ref else responses[str(status)]
    )
    schema = response["content"]["application/json"]["schema"]
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT4)
    )
    if "$ref" in schema:
        schema = {"$ref": DOC_URI + schema["$ref"]}
    OAS30Validator(schema, registry=registry).validate(body)


@contextlib.contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """The real app on an ephemeral loopback port, its loop in a thread: for blocking clients
    (the CLI, urllib) in the test's own thread. Yields the base URL; cleans up on exit."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    thread = threading.Thread(target=loop.run_forever, name="live-server", daemon=True)
    try:
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        host, port = runner.addresses[0][:2]
        thread.start()
        yield f"http://{host}:{port}"
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def serving(body: bytes, content_type: str = "image/jpeg") -> Handler:
    """A handler answering every GET with `body`."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return handler


@contextlib.asynccontextmanager
async def web_site(routes: Mapping[str, Handler]) -> AsyncIterator[str]:
    """A web server on an ephemeral loopback port answering GET `routes` (for adds by URL, in
    the test's own loop); yields its base URL, without a trailing slash."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, str, str]:
    """`imgsearch ARGV` in-process: its exit code, stdout and stderr."""
    from imgsearch import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def serve_process(
    log: Path, env: dict[str, str], *serve_args: str, timeout: float = STARTUP_TIMEOUT
) -> Iterator[str]:
    """`imgsearch serve SERVE_ARGS` on a free port, its output in `log`; yields its URL once
    /health answers, and terminates it on exit."""
    port = free_port()
    args = [sys.executable, "-m", "imgsearch", "serve", "--port", str(port), *serve_args]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    passed = False
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "daemon did not become ready"
                time.sleep(0.2)
        yield url
        passed = True
    finally:
        proc.terminate()
        reap(proc, log, fail=passed)  # (a failure of the test's own is the one to report)


BROWSER_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def open_page(pw: Any, profile: Path, *flags: str) -> tuple[Any, Any, list[str]]:
    """Headless Chromium (BROWSER_FLAGS + `flags`, a fresh profile) and a 1280x900 page, with
    `expect`'s timeout at 60 s: (browser, page, problems), where page errors and console errors
    collect. `pw`: the sync_playwright() context."""
    from playwright.sync_api import expect

    browser = pw.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*BROWSER_FLAGS, *flags],
        viewport={"width": 1280, "height": 900},
    )
    problems: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    expect.set_options(timeout=60_000)
    return browser, page, problems


def hold_first(page: Any, pattern: str) -> list[Any]:
    """Hold back the page's first request matching `pattern` (its Route lands in the returned
    list, for the test to `continue_()` later); later ones go through."""
    held: list[Any] = []

    def route(request_route: Any) -> None:
        if held:
            request_route.continue_()
        else:
            held.append(request_route)

    page.route(pattern, route)
    return held


CONE_DIM = 64


def cone(n: int, clusters: int, seed: int = 0, dim: int = CONE_DIM) -> np.ndarray:
    """Unit vectors like embeddings: one shared direction (pairs at cosine ~0.5-0.8, where
    bfloat16 scores are coarsest), clusters of varied spread around it."""
    rng = np.random.default_rng(seed)
    mean = 3.0 * rng.standard_normal(dim)
    centres = rng.standard_normal((clusters, dim))
    spread = rng.uniform(0.5, 1.2, clusters)
    which = rng.integers(0, clusters, n)
    x = mean + centres[which] + spread[which, None] * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def spectral_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors whose k-th principal direction's variance falls as k^-1.2 (as embeddings'
    do), the directions a random rotation of the axes."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(5).standard_normal((dim, dim)))[0]
    x = rng.standard_normal((n, dim)) * np.arange(1, dim + 1) ** -0.6
    x = x @ basis.T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def faiss_threads_after(setup: str, work: str) -> str:
    """Run `work` in a worker thread of a fresh interpreter that loaded torch first (as the
    daemon does: FAISS's OpenMP calls then bind to torch's runtime) with torch's default at
    one thread; `setup` runs before, with `x` (3000 unit 64-d rows), numpy, torch and faiss
    imported. Returns its output: "faiss threads after N", the worker's FAISS team size after
    `work` (it sets 2 before)."""
    script = f"""
import threading
import torch
import faiss
import numpy as np
torch.set_num_threads(1)  # as the daemon's embedder does, for threads yet to run torch
x = np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
{setup}
seen = {{}}
def worker():
    faiss.omp_set_num_threads(2)
{textwrap.indent(work, "    ")}
    seen["after"] = faiss.omp_get_max_threads()
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print("faiss threads after", seen["after"])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def quality(x: np.ndarray, centres: np.ndarray) -> tuple[float, np.ndarray]:
    """k-means' objective (mean best inner product, float32) and the lists' sizes."""
    sims = x @ centres.T
    return float(sims.max(axis=1).mean()), np.bincount(sims.argmax(axis=1), minlength=len(centres))


def trained(factory: str, x: np.ndarray) -> Any:
    """An index_factory index over CONE_DIM, trained on `x` (inner product); a factory of the
    policy's rotated kind ("RPCA,...") trained as the daemon trains it (rotation.train)."""
    import faiss

    from imgsearch.index import rotation

    factory, rotated = rotation.factory_of(factory)
    index = faiss.index_factory(CONE_DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if rotated:
        return rotation.train(index, x)
    index.train(x)
    return index


def contents(index: Any) -> dict[int, tuple[int, bytes]]:
    """Every id's (list, unpacked code), read back through the index's CodePacker."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    packer = ivf.get_CodePacker()
    out: dict[int, tuple[int, bytes]] = {}
    code = np.zeros(packer.code_size, np.uint8)
    for i in range(ivf.nlist):
        n = lists.list_size(i)
        ids = faiss.rev_swig_ptr(lists.get_ids(i), n)
        for j in range(n):
            packer.unpack_1_c(lists.get_codes(i), j, faiss.swig_ptr(code))
            out[int(ids[j])] = (i, code.tobytes())
    return out


def cached_share(path: Path) -> float:
    """The share of a file's pages in the page cache (mincore over a shared read-only mapping
    made by libc itself, so nothing is read in to look)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            flags = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, flags) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(f & 1 for f in flags) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def uncached(path: Path) -> None:
    """Drop a file's pages from the page cache (written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def small_disk(where: Path, megabytes: int, kind: str = "tmpfs") -> Iterator[Path]:
    """A file system of `megabytes` mounted on the new folder `where`: a real one that runs
    out of space (`fill`). "tmpfs", or "btrfs" (copy-on-write: a block rewritten takes a new
    one; made on an image file beside `where`, loop-mounted, at least 114 MB). Skips the test
    where mounting is not allowed (not root) or btrfs cannot be made (no mkfs.btrfs, no loop
    devices)."""
    where.mkdir(parents=True)
    if kind == "tmpfs":
        mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)]
    else:
        image = where.with_name(f"{where.name}.{kind}")
        with open(image, "wb") as fh:
            fh.truncate(megabytes << 20)
        if shutil.which(f"mkfs.{kind}") is None:
            pytest.skip(f"no mkfs.{kind} here (Debian's btrfs-progs)")
        subprocess.run([f"mkfs.{kind}", "-q", "-f", str(image)], capture_output=True, check=True)
        mount = ["mount", "-o", "loop", str(image), str(where)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no small {kind} to fill here (mount: {done.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


def unprivileged(script: str, *args: str, timeout: float = 120) -> Any:
    """Run a Python `script` (its argv: `args`) where file permissions bind, in the repository
    root; return the JSON its last line of output prints. Root is exempt from them
    (CAP_DAC_OVERRIDE): it runs in a user namespace of its own (`unshare -U`), where it keeps
    its uid over the files but holds no capability on them. Skips the test where that is not
    allowed."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["unshare", "-U"]
        if shutil.which("unshare") is None:
            pytest.skip("root, and no unshare to run without CAP_DAC_OVERRIDE")
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"root, and no user namespace here (unshare: {probe.stderr.strip()})")
    done = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def fill(disk: Path, leave: int = 0) -> Path:
    """Grow or shrink the file `disk`/ballast until the file system has `leave` bytes free
    (at most, where it is full already)."""
    ballast = disk / "ballast"
    ballast.touch()
    change = shutil.disk_usage(disk).free - leave
    if change < 0:
        os.truncate(ballast, max(0, ballast.stat().st_size + change))
        return ballast
    with open(ballast, "ab") as fh:  # written: a hole (truncate) would take no space
        try:
            fh.write(bytes(change))
            fh.flush()
        except OSError:  # full already (a file's own blocks): as full as it gets
            pass
    return ballast


def ingester(catalog: Catalog, embedder: Embedder) -> Ingester:
    """An Ingester on `catalog` with small batches, one worker, any path allowed."""
    return Ingester(
        catalog,
        embedder,
        extensions=BASE_EXTENSIONS,
        allows=lambda _: True,
        batch_size=4,
        workers=1,
        max_file_bytes=10**7,
        max_pixels=10**8,
    )


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """`n` unit vectors around 50 centres (an index has lists worth training for them)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def put_all(catalog: Catalog, vectors: np.ndarray, start: int = 0, batch: int = 2000) -> list[int]:
    """`vectors` written as images /v/<start + i>.jpg, `batch` a write; their ids."""
    ids: list[int] = []
    for at in range(0, len(vectors), batch):
        items = [
            NewImage(FileFacts(f"/v/{start + at + i}.jpg", 1, 1, f"h{start + at + i}", 1, 1), v)
            for i, v in enumerate(vectors[at : at + batch])
        ]
        ids += catalog.put(items).ids
    return ids


def crashed(catalog: Catalog) -> None:
    """Stopped as a kill -9 leaves it: nothing saved beyond what SQLite holds."""
    catalog.index.close()
    catalog.store.close()


def without_worker(catalog: Catalog) -> None:
    """Stop the index's background worker: the test calls maintain() itself, at known points."""
    catalog.index.close()
    catalog.index._stop.clear()


def agrees(catalog: Catalog) -> None:
    """The index finds exactly the images the store holds."""
    assert sorted(catalog.index.ids().tolist()) == sorted(catalog.store.ids().tolist())
