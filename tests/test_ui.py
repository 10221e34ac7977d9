"""The web page at /, its static files, /thumbnail, and the page end to end in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http.server
import io
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.thumbnails import THUMBNAIL_SIZE, ThumbnailCache
from imgsearch.web import create_app

from .helpers import (
    CHROMIUM,
    PHOTOS,
    TOKEN,
    ClientFactory,
    get_json,
    hold_first,
    jpeg_bytes,
    open_page,
    photo,
    serve_in_thread,
)

Client = TestClient[web.Request, web.Application]
STATIC = Path(__file__).parent.parent / "imgsearch" / "web" / "static"
# Paste or drop an image fetched from the page's origin, as a user would from elsewhere.
SEND_IMAGE = """async ([event, url]) => {
  const blob = await (await fetch(url)).blob();
  const data = new DataTransfer();
  data.items.add(new File([blob], "query.jpg", { type: "image/jpeg" }));
  const init = { bubbles: true, cancelable: true };
  if (event === "paste") {
    document.dispatchEvent(new ClipboardEvent("paste", { ...init, clipboardData: data }));
  } else {
    const drop = new DragEvent("drop", { ...init, dataTransfer: data });
    document.getElementById("drop").dispatchEvent(drop);
  }
}"""
# Every job and status line the page shows from now on, in window.seen ("ID STATUS").
RECORD_JOB = """() => {
  const status = document.getElementById("job-status");
  const cancel = document.getElementById("cancel");
  window.seen = [];
  new MutationObserver(() => window.seen.push(`${cancel.dataset.job} ${status.textContent}`))
    .observe(document.getElementById("job"), {
      subtree: true, childList: true, characterData: true, attributeFilter: ["data-job"],
    });
}"""


# -- the page and its files ------------------------------------------------------------------


async def test_page_uses_only_same_origin_assets(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert 'src="/static/app.js"' in page and 'href="/static/style.css"' in page
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} refers to another origin"
        assert "/static/" not in text or path.name == "index.html"
    for name in ("common.js", "query.js", "compare.js", "library.js"):
        assert f'src="/static/{name}"' in page


@pytest.mark.parametrize(
    ("name", "kind"), [("app.js", "text/javascript"), ("style.css", "text/css")]
)
async def test_static_files_have_their_content_types(client: Client, name: str, kind: str) -> None:
    resp = await client.get(f"/static/{name}")
    assert resp.status == 200
    assert resp.content_type == kind
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.read() == (STATIC / name).read_bytes()


@pytest.mark.parametrize(
    "name", ["nope.js", ".hidden.css", "..%2Fui.py", "%2E%2E%2Fkeys.py", "x" * 300 + ".js"]
)
async def test_static_serves_nothing_else(client: Client, name: str) -> None:
    resp = await client.get(f"/static/{name}")
    assert resp.status == 404
    assert (await resp.json())["status"] == 404


async def test_page_passes_its_token_to_its_assets(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder
) -> None:
    client = await aiohttp_client(
        create_app(dataclasses.replace(config, token="s3cret&x"), embedder=tiny_embedder)
    )
    assert (await client.get("/")).status == 401
    page = await (await client.get("/", params={"token": "s3cret&x"})).text()
    assert 'src="/static/app.js?token=s3cret%26x"' in page
    assert (await client.get("/static/app.js", params={"token": "s3cret&x"})).status == 200


# -- thumbnails ------------------------------------------------------------------------------


def thumbnail_files(config: Config) -> list[Path]:
    """The thumbnails in the derived-file cache (one file per image and size)."""
    return sorted((config.data_dir / "cache" / "thumbnails").glob("*/[0-9]*"))


async def test_thumbnail_is_a_small_jpeg_cached_and_reused(
    client: Client, photos: dict[str, Path], config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    await get_json(client, "/add", image=str(photos["astronaut"].parent))
    resp = await client.get("/thumbnail", params={"image": str(photos["astronaut"])})
    assert resp.status == 200
    assert resp.content_type == "image/jpeg"
    first = await resp.read()
    img = Image.open(io.BytesIO(first))
    assert img.format == "JPEG" and max(img.size) == THUMBNAIL_SIZE
    [cached] = thumbnail_files(config)
    made = cached.stat().st_mtime_ns

    def no_decoding(self: ThumbnailCache, data: bytes) -> bytes:
        raise AssertionError("a cached thumbnail was made again")

    monkeypatch.setattr(ThumbnailCache, "make", no_decoding)
    resp = await client.get("/thumbnail", params={"image": str(photos["astronaut"])})
    assert resp.status == 200 and await resp.read() == first
    assert cached.stat().st_mtime_ns == made


async def test_changed_image_gets_a_new_thumbnail(
    client: Client, photos: dict[str, Path], config: Config
) -> None:
    target = photos["coffee"]
    await get_json(client, "/add", image=str(target))
    first = await (await client.get("/thumbnail", params={"image": str(target)})).read()
    [old] = thumbnail_files(config)
    old_bytes = old.read_bytes()

    photo("rocket").save(target, quality=90)
    later = time.time() + 5
    os.utime(target, (later, later))
    second = await (await client.get("/thumbnail", params={"image": str(target)})).read()
    assert second != first
    [new] = thumbnail_files(config)
    assert new.read_bytes() != old_bytes  # the old version is replaced by the new one

    await get_json(client, "/add", image=str(target), update="1")
    resp = await client.get("/thumbnail", params={"image": str(target)})
    assert await resp.read() == second


async def test_thumbnail_only_for_indexed_images(client: Client, photos: dict[str, Path]) -> None:
    await get_json(client, "/add", image=str(photos["chelsea"]))
    not_indexed = await get_json(client, "/thumbnail", status=404, image=str(photos["rocket"]))
    assert not_indexed == {"error": f"not an indexed image: {photos['rocket']}", "status": 404}
    await get_json(client, "/thumbnail", status=404, image=str(photos["rocket"].parent / "no.jpg"))
    await get_json(client, "/thumbnail", status=400)
    await get_json(client, "/thumbnail", status=400, image="relative.jpg")
    photos["chelsea"].unlink()  # indexed, then vanished
    await get_json(client, "/thumbnail", status=404, image=str(photos["chelsea"]))


def test_thumbnail_of_transparent_png_is_flattened(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path / "thumbs", max_file_bytes=10**7, max_pixels=10**8)
    rgba = Image.new("RGBA", (600, 300), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    img = Image.open(io.BytesIO(cache.make(buf.getvalue())))
    assert img.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE // 2)
    assert img.getpixel((10, 10)) == (255, 255, 255)


# -- the page in a real browser --------------------------------------------------------------


@contextlib.contextmanager
def _serve_folder(folder: Path) -> Iterator[str]:
    """A static file server for `folder` on 127.0.0.1, in a thread; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_page_end_to_end_in_chromium(tmp_path: Path, lite0_daemon: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        photo(name).save(folder / f"{name}.jpg", quality=90)
    cat = photo("chelsea")
    w, h = cat.size
    crop = tmp_path / "query" / "crop.jpg"
    crop.parent.mkdir()
    cat.crop((w // 5, h // 6, w * 4 // 5, h * 5 // 6)).save(crop, quality=85)

    with sync_playwright() as pw:
        browser, page, problems = open_page(pw, tmp_path / "profile")
        page.goto(f"{lite0_daemon}/?token={TOKEN}")
        expect(page.locator("#comparators input[value=verify]")).to_be_attached()

        # Index the folder from the page and watch the job finish.
        page.fill("#folder", str(folder))
        page.click("#index-form button[type=submit]")
        expect(page.locator("#percent")).to_have_text("100%")
        expect(page.locator("#job-status")).to_contain_text(f"done: {len(PHOTOS)}/{len(PHOTOS)}")
        expect(page.locator("#jobs tbody tr").first).to_contain_text("done")
        expect(page.locator("#stats")).to_contain_text(f"{len(PHOTOS)} images")

        # A text query: the offline model has no text tower, and the page says so.
        page.fill("#text", "a cat")
        page.click("#text-form button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("has no text tower")
        page.screenshot(path=str(tmp_path / "ui-text-error.png"))
        problems.clear()  # the browser logs the 400 itself

        # Upload a crop: the original comes first, with its thumbnail.
        page.set_input_files("#file", str(crop))
        first = page.locator("#results li").first
        expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))
        expect(page.locator("#message")).to_be_hidden()
        first_thumb = first.locator("img")
        expect(first_thumb).to_have_js_property("complete", True)
        assert first_thumb.evaluate("img => img.naturalWidth") == THUMBNAIL_SIZE

        # Paste from the clipboard, drop a file, give a path: the same searches.
        for event, name in (("paste", "coffee"), ("drop", "rocket")):
            url = f"/thumbnail?image={folder / name}.jpg&token={TOKEN}"
            page.evaluate(SEND_IMAGE, [event, url])
            expect(first.locator(".path")).to_have_text(str(folder / f"{name}.jpg"))
        page.fill("#path", str(crop))
        page.click("#path-form button[type=submit]")
        expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))
        expect(page.locator("#preview")).to_be_hidden()

        # Verify re-runs the search: the crop is an edited copy of the first result.
        page.check("#comparators input[value=verify]")
        expect(first.locator(".badge")).to_have_text(re.compile("edited|duplicate"))
        expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))
        expect(first.locator(".facts")).to_contain_text("verify")

        # An http(s) address in the same boxes: the daemon downloads it (from 127.0.0.1).
        with _serve_folder(crop.parent) as web_url:
            page.fill("#path", f"{web_url}/{crop.name}")
            page.click("#path-form button[type=submit]")
            expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))
            page.fill("#folder", f"{web_url}/{crop.name}")
            page.click("#index-form button[type=submit]")
            expect(page.locator("#job-status")).to_contain_text("done: 1/1")
            page.click("#path-form button[type=submit]")
            expect(first.locator("a.source")).to_have_attribute("href", f"{web_url}/{crop.name}")
            expect(first.locator(".path")).to_contain_text("/downloads/")

        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if artifacts := os.environ.get("IMGSEARCH_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for name in ("ui.png", "ui-text-error.png"):
            shutil.copy(tmp_path / name, Path(artifacts) / name)
    assert problems == []


async def test_removed_image_loses_its_thumbnail(
    client: Client, photos: dict[str, Path], config: Config
) -> None:
    await get_json(client, "/add", image=str(photos["coffee"]))
    resp = await client.get("/thumbnail", params={"image": str(photos["coffee"])})
    assert resp.status == 200
    assert len(thumbnail_files(config)) == 1
    await get_json(client, "/remove", image=str(photos["coffee"]))
    assert thumbnail_files(config) == []
    await get_json(client, "/thumbnail", status=404, image=str(photos["coffee"]))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_job_progress_in_chromium(tmp_path: Path, lite0_daemon: str) -> None:
    """A second job waits behind a first one that is still downloading: the page shows it
    queued, its total unknown, and watches it alone, though the first job's poll was still on
    its way when it started."""
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "photos"
    folder.mkdir()
    photo("coffee").save(folder / "coffee.jpg", quality=90)
    release = threading.Event()

    async def held_jpeg(request: web.Request) -> web.Response:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        return web.Response(body=jpeg_bytes(photo("rocket")), content_type="image/jpeg")

    site = web.Application()
    site.router.add_get("/held.jpg", held_jpeg)
    with serve_in_thread(site) as site_url, sync_playwright() as pw:
        try:
            browser, page, problems = open_page(pw, tmp_path / "profile")
            # The page's first poll of a job is held back (then its answer comes late).
            held = hold_first(page, "**/jobs/*")
            page.goto(f"{lite0_daemon}/?token={TOKEN}")
            expect(page.locator("#stats")).to_contain_text("0 images")
            status = page.locator("#job-status")
            cancel = page.locator("#cancel")

            # The first job downloads an image the site holds back: it runs until released.
            page.fill("#folder", f"{site_url}/held.jpg")
            page.click("#index-form button[type=submit]")
            expect(cancel).to_have_attribute("data-job", re.compile(r"^\w+$"))
            first_job = cancel.get_attribute("data-job")
            page.fill("#folder", str(folder))
            page.click("#index-form button[type=submit]")
            expect(cancel).not_to_have_attribute("data-job", first_job or "")
            second_job = cancel.get_attribute("data-job")
            page.wait_for_event("response", lambda r: f"/jobs/{second_job}" in r.url)
            expect(status).to_contain_text("queued: 0/? ")

            # The first job's poll answers now: the page goes on with the second job only.
            page.evaluate(RECORD_JOB)
            assert len(held) == 1
            with page.expect_response(f"**/jobs/{first_job}") as answer:
                held[0].continue_()
            answer.value.finished()
            for _ in range(2):  # polls of the second job, each 0.5 s after the one before
                page.wait_for_event("response", lambda r: "/jobs/" in r.url)
            seen = page.evaluate("() => window.seen")
            assert seen and all(line.startswith(f"{second_job} queued: 0/? ") for line in seen)
            expect(cancel).to_have_attribute("data-job", second_job or "")
        finally:
            release.set()
        expect(status).to_contain_text("done: 1/1")
        expect(cancel).to_have_attribute("data-job", second_job or "")
        expect(page.locator("#stats")).to_contain_text("2 images")
        browser.close()
    assert problems == []
