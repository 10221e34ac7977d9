"""The page's query tools and views in Chromium: webcam, crop, "Search with this", side by side
with verify's evidence, duplicates and watched folders. Screenshots are kept as artifacts."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from .helpers import CHROMIUM, PHOTOS, TOKEN, hold_first, open_page, photo, serve_in_thread

FAKE_MEDIA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
# Pixels of the matched-region outline the side-by-side view draws (rgb(255, 170, 0)).
COUNT_OUTLINE = """canvas => {
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 240 && Math.abs(d[i + 1] - 170) < 20 && d[i + 2] < 30) n++;
  }
  return n;
}"""
# Every text the element with this id shows from now on, in window.seen (the page's own
# state, for what a late answer may overwrite between two checks).
RECORD_TEXT = """id => {
  const node = document.getElementById(id);
  window.seen = [];
  new MutationObserver(() => window.seen.push(node.textContent))
    .observe(node, { childList: true, characterData: true, subtree: true });
}"""


def _api(url: str, path: str, body: Any = None, **params: str) -> Any:
    """GET `path` with `params`; POST `body` as JSON where there is one."""
    query = urllib.parse.urlencode(params)
    request = urllib.request.Request(
        f"{url}{path}?{query}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.load(resp)


def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll from Python (wait_for_function evaluates strings in the page: the CSP forbids it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _library(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "copies").mkdir(parents=True)
    for name in PHOTOS:
        photo(name).save(folder / f"{name}.jpg", quality=90)
    shutil.copy(folder / "chelsea.jpg", folder / "copies" / "chelsea-copy.jpg")
    return folder


def _cat_variants(folder: Path) -> None:
    """Edited copies of the cat: blurred, inverted, grey and turned (near in the embedding),
    and upside-down crops (further away, but verify vouches for them and lifts them)."""
    cat = photo("chelsea")
    w, h = cat.size
    ImageOps.grayscale(cat).rotate(90, expand=True).save(folder / "cat-gray-rot.jpg")
    cat.crop((0, 0, w * 6 // 10, h * 7 // 10)).rotate(180).save(folder / "cat-crop-upside.jpg")
    ImageOps.invert(cat).save(folder / "cat-inverted.jpg")
    cat.filter(ImageFilter.GaussianBlur(6)).save(folder / "cat-blur.jpg")
    ImageOps.posterize(ImageOps.invert(cat), 2).save(folder / "cat-poster.jpg")
    ImageOps.mirror(cat.filter(ImageFilter.GaussianBlur(4))).save(folder / "cat-mirror-blur.jpg")
    cat.crop((w // 3, 0, w, h * 8 // 10)).rotate(180).save(folder / "cat-crop2-upside.jpg")


def _crowd(folder: Path, n: int = 110) -> None:
    """The coffee cup among `n` mirrored cats (blurred, darkened, trimmed): against the cat and
    the cup side by side, the cats all come first by embedding (the cup near 70th), and verify
    vouches for none of them (a mirror image has no geometric match)."""
    folder.mkdir()
    photo("coffee").save(folder / "coffee.jpg", quality=90)
    cat = ImageOps.mirror(photo("chelsea"))
    w, h = cat.size
    for i in range(n):
        v = cat.filter(ImageFilter.GaussianBlur(1 + i % 5))
        v = ImageEnhance.Brightness(v).enhance(0.7 + 0.03 * (i // 5))
        v = v.crop((i % 7 * 5, i % 3 * 5, w - i % 4 * 5, h - i % 6 * 5))
        v.save(folder / f"m{i:03d}.jpg", quality=80)


def _queries(tmp_path: Path) -> dict[str, Path]:
    """A crop of the cat, and the cat and the coffee cup side by side in one picture."""
    out = tmp_path / "queries"
    out.mkdir()
    cat, cup = photo("chelsea"), photo("coffee")
    w, h = cat.size
    cat.crop((w // 5, h // 6, w * 4 // 5, h * 5 // 6)).save(out / "crop.jpg", quality=85)
    pair = Image.new("RGB", (cat.width + cup.width, max(cat.height, cup.height)), "white")
    pair.paste(cat, (0, 0))
    pair.paste(cup, (cat.width, 0))
    pair.save(out / "pair.jpg", quality=90)
    return {"crop": out / "crop.jpg", "pair": out / "pair.jpg"}


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_page_views_in_chromium(tmp_path: Path, lite0_daemon: str) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    folder = _library(tmp_path)
    queries = _queries(tmp_path)
    _api(lite0_daemon, "/add", image=str(folder))
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser, page, problems = open_page(pw, tmp_path / "profile", *FAKE_MEDIA)
        page.goto(f"{lite0_daemon}/?token={TOKEN}")
        expect(page.locator("#stats")).to_contain_text(f"{len(PHOTOS) + 1} images")
        results = page.locator("#results li")
        first = results.first

        # The webcam (Chromium's fake camera): take a picture, and it is the query.
        page.click("#webcam-start")
        expect(page.locator("#webcam-snap")).to_be_visible()
        _until(lambda: page.evaluate("() => document.getElementById('webcam').videoWidth") > 0)
        page.screenshot(path=str(shots / "ui-webcam.png"))
        page.click("#webcam-snap")
        expect(page.locator("#webcam")).to_be_hidden()
        expect(page.locator("#query-view")).to_be_visible()
        expect(page.locator("#summary")).to_contain_text(f"{len(PHOTOS) + 1} results")

        # Crop: the pair's right half is the coffee cup; clearing the crop searches the pair.
        page.set_input_files("#file", str(queries["pair"]))
        expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))
        box = page.locator("#preview").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=5)
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=5)
        page.mouse.up()
        expect(page.locator("#crop-box")).to_be_visible()
        expect(page.locator("#crop-text")).to_contain_text("part of the image")
        expect(first.locator(".path")).to_have_text(str(folder / "coffee.jpg"))
        page.screenshot(path=str(shots / "ui-crop.png"))
        page.click("#crop-clear")
        expect(page.locator("#crop-box")).to_be_hidden()
        expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))

        # "Search with this": a result becomes the query.
        rocket = results.filter(has_text=str(folder / "rocket.jpg"))
        rocket.locator("button.search-this").click()
        expect(first.locator(".path")).to_have_text(str(folder / "rocket.jpg"))
        expect(page.locator("#preview")).to_have_attribute("src", re.compile("/thumbnail"))

        # Filters: only the copies folder (then none again).
        page.fill("#filter-folder", str(folder / "copies"))
        page.dispatch_event("#filter-folder", "change")
        expect(page.locator("#summary")).to_contain_text("1 result ")
        expect(first.locator(".path")).to_have_text(str(folder / "copies" / "chelsea-copy.jpg"))
        page.fill("#filter-folder", "")
        page.dispatch_event("#filter-folder", "change")
        expect(page.locator("#summary")).to_contain_text(f"{len(PHOTOS) + 1} results")

        # Where: only a comma before the next KEY: separates, so a value may hold commas.
        rocket_path = str(folder / "rocket.jpg")
        _api(
            lite0_daemon,
            "/metadata",
            {"image": rocket_path, "metadata": {"author": "Smith, John", "kind": "rocket"}},
        )
        page.fill("#filter-where", "author:Smith, John, kind:rocket")
        page.dispatch_event("#filter-where", "change")
        expect(page.locator("#summary")).to_contain_text("1 result ")
        expect(first.locator(".path")).to_have_text(rocket_path)
        expect(page.locator("#message")).to_be_hidden()
        page.fill("#filter-where", "")
        page.dispatch_event("#filter-where", "change")
        expect(page.locator("#summary")).to_contain_text(f"{len(PHOTOS) + 1} results")

        # Side by side: the crop of the cat against the cat, with the outline and matches.
        page.set_input_files("#file", str(queries["crop"]))
        expect(first.locator(".path")).to_have_text(str(folder / "chelsea.jpg"))
        first.locator("button.side-by-side").click()
        expect(page.locator("#side-summary")).to_contain_text("matching points")
        expect(page.locator("#side-summary")).to_contain_text("edited")
        assert page.locator("#side-canvas").evaluate(COUNT_OUTLINE) > 200
        page.locator("#side").screenshot(path=str(shots / "ui-side-by-side.png"))

        # Duplicates of one folder: the byte-identical copy of the cat.
        page.fill("#dups-folder", str(folder))
        page.click("#dups-form button[type=submit]")
        cluster = page.locator("#dups .cluster").first
        expect(cluster).to_contain_text("identical")
        expect(cluster.locator(".path")).to_have_count(2)
        expect(cluster).to_contain_text(str(folder / "copies" / "chelsea-copy.jpg"))
        page.locator("section:has(#dups-title)").screenshot(path=str(shots / "ui-duplicates.png"))

        # Watched folders: watch one, a new photo in it is counted, then stop.
        watched = tmp_path / "incoming"
        watched.mkdir()
        page.fill("#watch-dir", str(watched))
        page.click("#watch-form button[type=submit]")
        row = page.locator("#watches tbody tr").filter(has_text=str(watched))
        expect(row).to_contain_text("watching")
        photo("horse").save(watched / "horse.jpg", quality=90)
        expect(row.locator("td").nth(3)).to_have_text("1")
        page.locator("section:has(#watch-title)").screenshot(path=str(shots / "ui-watch.png"))
        row.locator("button.stop").click()
        expect(row).to_have_count(0)
        page.screenshot(path=str(shots / "ui-views.png"), full_page=True)
        browser.close()
    if artifacts := os.environ.get("IMGSEARCH_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, Path(artifacts) / shot.name)
    assert problems == []


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_side_by_side_in_chromium(tmp_path: Path, lite0_daemon: str) -> None:
    """Side by side on results that verify would move below the page's limit (of 5, with and
    without another comparator; of 50, by a candidate from a region of the query), two clicks
    whose answers come back in the wrong order, and queries by a path that is not indexed and
    by a URL (the page has no picture of the query)."""
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        photo(name).save(folder / f"{name}.jpg", quality=90)
    _cat_variants(folder)
    queries = _queries(tmp_path)
    crop = queries["crop"]
    _api(lite0_daemon, "/add", image=str(folder))

    async def crop_jpeg(request: web.Request) -> web.Response:
        return web.Response(body=crop.read_bytes(), content_type="image/jpeg")

    site = web.Application()
    site.router.add_get("/crop.jpg", crop_jpeg)
    with serve_in_thread(site) as site_url, sync_playwright() as pw:
        browser, page, problems = open_page(pw, tmp_path / "profile")
        page.goto(f"{lite0_daemon}/?token={TOKEN}")
        expect(page.locator("#comparators input[value=verify]")).to_be_attached()
        side = page.locator("#side-summary")
        message = page.locator("#message")
        results = page.locator("#results li")

        # The blurred cat is 5th by embedding; verify lifts two upside-down crops above it.
        page.select_option("#limit", "5")
        page.set_input_files("#file", str(crop))
        expect(page.locator("#summary")).to_contain_text("5 results")
        blur = results.filter(has_text=str(folder / "cat-blur.jpg"))
        expect(blur).to_have_count(1)
        blur.locator("button.side-by-side").click()
        expect(side).to_contain_text("cat-blur.jpg: ")
        expect(side).to_contain_text("matching points")
        expect(message).to_be_hidden()
        # orb lifts an upside-down crop, 7th by embedding, into the page's 5.
        page.check("#comparators input[value=orb]")
        upside = results.filter(has_text=str(folder / "cat-crop-upside.jpg"))
        expect(upside).to_have_count(1)
        upside.locator("button.side-by-side").click()
        expect(side).to_contain_text("cat-crop-upside.jpg: edited")
        expect(message).to_be_hidden()
        page.uncheck("#comparators input[value=orb]")
        expect(upside).to_have_count(0)

        # Two clicks; the first one's answer comes last and must not replace the second's.
        held = hold_first(page, "**/search?*evidence=1*")
        names = [results.nth(i).locator(".path").text_content() or "" for i in range(3)]
        late, wanted, last = (Path(n).name for n in names)
        with page.expect_request("**/search?*evidence=1*"):
            results.nth(0).locator("button.side-by-side").click()
        results.nth(1).locator("button.side-by-side").click()
        expect(side).to_contain_text(f"{wanted}: ")
        page.evaluate(RECORD_TEXT, "side-summary")
        assert len(held) == 1
        with page.expect_response("**/search?*evidence=1*") as answer:
            held[0].continue_()
        answer.value.finished()
        page.unroute("**/search?*evidence=1*")
        # A third view after it: the late answer had its chance to show in between.
        results.nth(2).locator("button.side-by-side").click()
        expect(side).to_contain_text(f"{last}: ")
        seen = page.evaluate("() => window.seen")
        assert not [text for text in seen if text.startswith(f"{late}: ")], seen
        expect(message).to_be_hidden()

        # A query by a path that is not indexed, then by URL: the daemon has no picture of it.
        outline = page.locator("#side-canvas")
        cat = results.filter(has_text=str(folder / "chelsea.jpg"))
        before = len(problems)
        page.fill("#path", str(crop))
        with page.expect_response("**/search?*image=*"):
            page.press("#path", "Enter")
        cat.locator("button.side-by-side").click()
        expect(side).to_contain_text("chelsea.jpg: edited")
        expect(side).to_contain_text("The query itself cannot be shown")
        assert outline.evaluate(COUNT_OUTLINE) > 200
        expect(message).to_be_hidden()
        # (the browser logs the thumbnail's 404 itself)
        assert all("status of 404" in problem for problem in problems[before:]), problems
        del problems[before:]
        page.fill("#path", f"{site_url}/crop.jpg")
        with page.expect_response("**/search?*url=*"):
            page.press("#path", "Enter")
        outline.evaluate("canvas => canvas.getContext('2d').clearRect(0, 0, 1e4, 1e4)")
        cat.locator("button.side-by-side").click()
        expect(side).to_contain_text("chelsea.jpg: edited")
        expect(side).to_contain_text("The query itself cannot be shown")
        assert outline.evaluate(COUNT_OUTLINE) > 200
        expect(message).to_be_hidden()
        page.locator("#side").screenshot(path=str(tmp_path / "ui-side-by-side-no-query.png"))

        # 50 results: the cup, 70th by embedding, comes in with the pool verify adds from the
        # query's right half and, vouched for, would push the 50th result out of 50.
        crowd = tmp_path / "crowd"
        _crowd(crowd)
        _api(lite0_daemon, "/add", image=str(crowd))
        page.fill("#filter-folder", str(crowd))
        page.select_option("#limit", "50")
        page.set_input_files("#file", str(queries["pair"]))
        expect(page.locator("#summary")).to_contain_text("50 results")
        expect(results.filter(has_text=str(crowd / "coffee.jpg"))).to_have_count(0)
        fiftieth = results.nth(49)
        name = Path(fiftieth.locator(".path").text_content() or "").name
        fiftieth.locator("button.side-by-side").click()
        expect(side).to_contain_text(f"{name}: similar")
        expect(message).to_be_hidden()
        browser.close()
    assert problems == []
