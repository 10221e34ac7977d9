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
from PIL import Image

from .helpers import CHROMIUM, PHOTOS, TOKEN, open_page, photo

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


def _api(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    request = urllib.request.Request(
        f"{url}{path}?{query}", headers={"Authorization": f"Bearer {TOKEN}"}
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
