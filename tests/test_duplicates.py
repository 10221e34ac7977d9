"""GET /duplicates and `imgsearch duplicates`: real photos, the bundled model, a real catalog."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageEnhance

from imgsearch import neighbours
from imgsearch.config import Config
from imgsearch.duplicates import DuplicateFinder, Stopped
from imgsearch.embedders import Embedder
from imgsearch.neighbours import close_pairs
from imgsearch.service import Service
from imgsearch.web import create_app
from imgsearch.web.openapi import document

from .helpers import ClientFactory, check_response, get_json, photo, run_cli

# Slow lane: the real EfficientNet-Lite0 over a library (make test runs it).
pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]
SOURCE = "https://example.org/chelsea.jpg"


def _crop(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = img.size
    return img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def _burst(background: Image.Image, subject: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Two shots of one scene: the same background, the subject moved."""
    w, h = background.size
    thing = subject.resize((w // 5, round(w / 5 * subject.height / subject.width)))
    shots = []
    for x, y in ((0.1, 0.2), (0.5, 0.3)):
        shot = background.copy()
        shot.paste(thing, (round(x * w), round(y * h)))
        shots.append(shot)
    return shots[0], shots[1]


def build_library(root: Path) -> None:
    """Originals, identical copies, edited copies, burst-like pairs, a broken copy."""
    sub, gone, bursts, broken = (root / n for n in ("sub", "gone", "bursts", "broken"))
    for folder in (sub, gone, bursts, broken):
        folder.mkdir(parents=True)
    for name in ("chelsea", "coffee", "rocket"):
        photo(name, 512).save(root / f"{name}.jpg", quality=90)
    for copy in (sub / "chelsea-copy.jpg", sub / "chelsea-copy2.jpg", gone / "chelsea.jpg"):
        shutil.copyfile(root / "chelsea.jpg", copy)
    shutil.copyfile(root / "coffee.jpg", sub / "coffee-copy.jpg")
    coffee, rocket = photo("coffee", 512), photo("rocket", 512)
    coffee.resize((coffee.width * 2 // 3, coffee.height * 2 // 3)).save(
        sub / "coffee-small.jpg", quality=70
    )
    coffee.save(gone / "coffee-q50.jpg", quality=50)
    _crop(rocket, (0.05, 0.05, 0.95, 0.95)).save(sub / "rocket-crop.jpg", quality=90)
    ImageEnhance.Brightness(rocket).enhance(0.75).save(sub / "rocket-dark.jpg", quality=90)
    a, b = _burst(photo("astronaut", 512), _crop(photo("coffee", 512), (0.3, 0.2, 0.7, 0.8)))
    a.save(bursts / "astronaut-1.jpg", quality=90)
    b.save(bursts / "astronaut-2.jpg", quality=90)
    coins = photo("coins", 512)
    _crop(coins, (0.0, 0.0, 0.85, 0.9)).save(bursts / "coins-1.jpg", quality=90)
    _crop(coins, (0.1, 0.03, 0.95, 0.93)).save(bursts / "coins-2.jpg", quality=90)
    horse = photo("horse", 512)
    horse.save(broken / "horse.jpg", quality=80)
    horse.resize((horse.width * 3 // 4, horse.height * 3 // 4)).save(broken / "horse-small.jpg")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    build_library(root)
    return root


@pytest.fixture(scope="module")
def service(
    library: Path, lite0: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The library indexed; gone/ marked missing (its watched folder vanished); and one file
    broken after indexing (its features were never computed: it cannot be verified)."""
    data = tmp_path_factory.mktemp("data")
    svc = Service(Config(data_dir=data, model="efficientnet-lite0", workers=2), embedder=lite0)
    try:
        report = svc.ingester.add(library)
        assert (report.added, report.failed) == (17, 0)
        assert len(svc.catalog.mark_missing(str(library / "gone"))) == 2
        copy = library / "sub" / "chelsea-copy2.jpg"  # as if downloaded: it has a source URL
        svc.ingester.add_files(
            [copy], label="test", update=True, sources={str(copy): SOURCE}, progress_bar=False
        )
        (library / "broken" / "horse-small.jpg").write_bytes(b"not a jpeg any more")
        yield svc
    finally:
        svc.close()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, service: Service) -> Client:
    return await aiohttp_client(create_app(service.config, service=service))


def paths(body: dict[str, Any], root: Path) -> list[tuple[str, list[str]]]:
    """Each cluster as (kind, image paths relative to the library), in order."""
    return [
        (c["kind"], [str(Path(i["image"]).relative_to(root)) for i in c["images"]])
        for c in body["clusters"]
    ]


def subject(image: str) -> str:
    """Which original photo a library file shows."""
    return Path(image).stem.split("-")[0]


async def test_identical_files_then_verified_near_copies(client: Client, library: Path) -> None:
    body = await get_json(client, "/duplicates")
    check_response(document(), "GET", "/duplicates", 200, body)
    assert paths(body, library) == [
        ("identical", ["chelsea.jpg", "sub/chelsea-copy.jpg", "sub/chelsea-copy2.jpg"]),
        ("identical", ["coffee.jpg", "sub/coffee-copy.jpg"]),
        ("near", ["rocket.jpg", "sub/rocket-dark.jpg", "sub/rocket-crop.jpg"]),
        ("near", ["coffee.jpg", "sub/coffee-small.jpg"]),
    ]
    assert body["clusters"][0]["images"][2] == {
        "image": str(library / "sub" / "chelsea-copy2.jpg"),
        "source": SOURCE,
    }
    rocket, coffee = body["clusters"][2]["images"], body["clusters"][3]["images"]
    assert rocket[0] == {"image": str(library / "rocket.jpg"), "distance": 0.0}
    # Re-lit and cropped: geometrically consistent edits, confirmed as the same photo.
    assert [(i["match"], i["verdict"]) for i in rocket[1:]] == [(0, "edited"), (0, "edited")]
    assert 0 < rocket[1]["distance"] < rocket[2]["distance"] <= 0.15
    # Byte-identical copies take part once, as their first path, which says how many there are.
    assert coffee[0] == {"image": str(library / "coffee.jpg"), "distance": 0.0, "copies": 1}
    assert coffee[1]["match"] == 0 and coffee[1]["verdict"] == "duplicate"
    summary = {k: v for k, v in body.items() if k not in {"clusters", "seconds", "cached"}}
    # 17 files, 2 missing; the broken one could not be verified and is left out.
    assert summary == {
        "images": 15,
        "threshold": 0.15,
        "verified": True,
        "method": "exact",
        "pairs": summary["pairs"],
        "checked": summary["checked"],
        "unreadable": 1,
    }
    assert summary["pairs"] >= summary["checked"] >= 5  # 2 rocket + 1 coffee + 2 bursts at least


def test_burst_shots_are_candidates_that_verification_turns_away(
    service: Service, library: Path
) -> None:
    bursts = {("astronaut-1.jpg", "astronaut-2.jpg"), ("coins-1.jpg", "coins-2.jpg")}
    unverified = DuplicateFinder(
        service.catalog, None, service.features, workers=2, max_file_bytes=10**8, max_pixels=10**8
    ).find()
    assert not unverified.verified and unverified.checked == 0
    found = {tuple(sorted(Path(m.image).name for m in c.images)) for c in unverified.clusters}
    assert bursts <= found  # without verification, close embeddings are all there is
    assert ("horse-small.jpg", "horse.jpg") in found  # nothing is read without verification
    for threshold in (0.15, 0.5):
        report = service.duplicates.find(threshold)
        assert report.verified
        clustered = {Path(m.image).name for c in report.clusters for m in c.images}
        assert not clustered & {name for pair in bursts for name in pair}, threshold


def test_different_photos_never_share_a_cluster(service: Service) -> None:
    unverified = DuplicateFinder(
        service.catalog, None, service.features, workers=2, max_file_bytes=10**8, max_pixels=10**8
    )
    for report in (service.duplicates.find(0.5), unverified.find(0.5)):
        for cluster in report.clusters:
            assert len({subject(m.image) for m in cluster.images}) == 1, cluster
    # Threshold 0: only byte-identical files.
    assert {c.kind for c in service.duplicates.find(0.0).clusters} == {"identical"}


async def test_folder_keeps_images_and_partners_inside(client: Client, library: Path) -> None:
    body = await get_json(client, "/duplicates", folder=str(library / "sub" / ".." / "sub"))
    check_response(document(), "GET", "/duplicates", 200, body)
    assert body["folder"] == str(library / "sub") and body["images"] == 6
    assert paths(body, library) == [
        ("identical", ["sub/chelsea-copy.jpg", "sub/chelsea-copy2.jpg"]),
        ("near", ["sub/coffee-copy.jpg", "sub/coffee-small.jpg"]),
        ("near", ["sub/rocket-dark.jpg", "sub/rocket-crop.jpg"]),
    ]
    body = await get_json(client, "/duplicates", folder=str(library / "broken"))
    assert (body["clusters"], body["images"], body["unreadable"]) == ([], 2, 1)
    body = await get_json(client, "/duplicates", folder=str(library / "nowhere"))
    assert (body["clusters"], body["images"]) == ([], 0)
    body = await get_json(client, "/duplicates", 400, folder="relative/path")
    check_response(document(), "GET", "/duplicates", 400, body)


def test_missing_images_are_left_out_until_they_return(service: Service, library: Path) -> None:
    def listed(threshold: float = 0.15) -> set[str]:
        report = service.duplicates.find(threshold)
        return {m.image for c in report.clusters for m in c.images}

    gone = {str(library / "gone" / "chelsea.jpg"), str(library / "gone" / "coffee-q50.jpg")}
    assert not listed() & gone
    assert service.duplicates.find().cached  # nothing changed: the last answer
    ids = [f.id for f in service.catalog.store.files_under(str(library / "gone"))]
    assert service.catalog.restore(ids) == 2
    try:
        report = service.duplicates.find()
        assert not report.cached
        assert listed() >= gone
    finally:
        assert len(service.catalog.mark_missing(str(library / "gone"))) == 2
    assert not listed() & gone


@pytest.mark.parametrize("raw", ["abc", "-0.1", "2.5", "nan", "inf", "1e400", "0x1"])
async def test_bad_threshold_is_a_400(client: Client, raw: str) -> None:
    body = await get_json(client, "/duplicates", 400, threshold=raw)
    check_response(document(), "GET", "/duplicates", 400, body)
    assert body["status"] == 400 and "threshold" in body["error"]


async def test_threshold_bounds_are_accepted(client: Client) -> None:
    for raw in ("0", "2", " 0.2 "):
        body = await get_json(client, "/duplicates", threshold=raw)
        assert body["threshold"] == float(raw)


def test_approximate_pass_finds_the_close_pairs_the_exact_one_does() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = rng.permutation(len(x))[:400].reshape(-1, 2)
    for a, b in rows:  # near copies, 0.002-0.14 away
        x[b] = x[a] + rng.uniform(0.05, 0.5) * rng.standard_normal(64).astype(np.float32) / 8
        x[b] /= np.linalg.norm(x[b])
    exact = close_pairs(x, 0.15, method="exact")
    ivf = close_pairs(x, 0.15, method="ivf")
    assert (exact.method, ivf.method) == ("exact", "ivf") and len(exact) >= len(rows)
    found = set(zip(ivf.first.tolist(), ivf.second.tolist(), strict=True))
    planted = {(min(a, b), max(a, b)) for a, b in rows.tolist()}
    assert len(found & planted) >= 0.97 * len(planted)
    assert found <= set(zip(exact.first.tolist(), exact.second.tolist(), strict=True))
    assert np.all(np.diff(ivf.distance) >= 0) and np.all(ivf.distance <= 0.15)


def test_a_tight_group_and_merging_in_parts_leave_the_approximate_pass_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,000 images of one embedding among 12,000 (blank product shots, black frames): k-means
    put several centres on the group and left all but one empty, and a cell with no members
    failed every /duplicates with a 500. Candidates are merged into each vector's best k a
    part at a time (all of them were held to the end: ~7 KB an image among look-alikes)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12_000, 256)).astype(np.float32)
    x[:2_000] = x[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    whole = close_pairs(x, 0.15, method="ivf")
    exact = close_pairs(x, 0.15, method="exact")
    assert len(whole) == len(exact) > 2_000
    monkeypatch.setattr(neighbours, "MERGE_EVERY", 1_000)  # dozens of merges, not one
    parts = close_pairs(x, 0.15, method="ivf")
    for field in ("first", "second", "distance"):
        assert np.array_equal(getattr(parts, field), getattr(whole, field)), field


def test_a_run_stops_when_asked_between_blocks() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Stopped("stop")

    for method in ("exact", "ivf"):
        calls = 0
        with pytest.raises(Stopped):
            close_pairs(x, 0.15, method=method, check=check)


@pytest.mark.parametrize("cancelled", [False, True], ids=["run_app", "handler-cancelled"])
async def test_a_run_its_client_left_stops_and_frees_the_next(
    client: Client, monkeypatch: pytest.MonkeyPatch, cancelled: bool
) -> None:
    """aiohttp (run_app's default) does not cancel a handler whose client left: an abandoned
    run (a Ctrl-C, a page closed) went on to its end, minutes at a million images, with every
    later run waiting for it, and a SIGTERM too. (The test server cancels such handlers.)"""
    import imgsearch.duplicates as finding

    server = client.server.runner.server
    assert server is not None
    monkeypatch.setattr(server, "handler_cancellation", cancelled)

    real = finding.close_pairs
    started, stopped = threading.Event(), threading.Event()

    def endless(vectors: np.ndarray, threshold: float, **kw: Any) -> Any:
        started.set()
        try:
            while True:  # a pass that never ends, but looks between its blocks
                kw["check"]()
                time.sleep(0.01)
        finally:
            stopped.set()

    monkeypatch.setattr(finding, "close_pairs", endless)
    with pytest.raises(asyncio.TimeoutError):
        await client.get("/duplicates", timeout=ClientTimeout(total=1.5))
    assert started.is_set()
    assert await asyncio.to_thread(stopped.wait, 10), "the run noticed its client had gone"
    monkeypatch.setattr(finding, "close_pairs", real)
    body = await get_json(client, "/duplicates", threshold="0.2")
    assert body["threshold"] == 0.2


def test_an_interrupted_finder_stops_the_run_in_progress(service: Service) -> None:
    """The daemon's shutdown interrupts a run (a SIGTERM waited for its end); later ones run."""
    finder = DuplicateFinder(
        service.catalog, None, service.features, workers=1, max_file_bytes=10**7, max_pixels=10**8
    )
    real = finder._vectors
    with pytest.MonkeyPatch.context() as patch:  # a SIGTERM once its vectors are read
        patch.setattr(finder, "_vectors", lambda folder: (finder.interrupt(), real(folder))[1])
        with pytest.raises(Stopped, match="daemon is stopping"):
            finder.find(0.3)
    assert finder.find(0.3).images > 0


def test_the_approximate_pass_gives_the_same_clusters(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = service.duplicates.find(0.15)
    monkeypatch.setattr(neighbours, "EXACT_MAX", 4)
    report = service.duplicates.find(0.1500001)  # another key: not the cached answer
    assert (exact.method, report.method) == ("exact", "ivf")
    assert report.clusters == exact.clusters


# -- the command line, against a real server -----------------------------------------------


async def test_cli_prints_a_block_per_cluster_or_json(
    aiohttp_server: Any,
    service: Service,
    library: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server: TestServer = await aiohttp_server(create_app(service.config, service=service))
    monkeypatch.setenv("IMGSEARCH_URL", str(server.make_url("")))
    monkeypatch.delenv("IMGSEARCH_TOKEN", raising=False)
    monkeypatch.chdir(library)

    async def run(*argv: str) -> tuple[Any, str, str]:
        return await asyncio.to_thread(run_cli, capsys, *argv)

    code, out, _ = await run("duplicates")
    blocks = out.rstrip("\n").split("\n\n")
    assert code == 0 and len(blocks) == 5
    assert blocks[0].splitlines() == [
        "identical: 3 images",
        f"  {library / 'chelsea.jpg'}",
        f"  {library / 'sub' / 'chelsea-copy.jpg'}",
        f"  {library / 'sub' / 'chelsea-copy2.jpg'}  <{SOURCE}>",
    ]
    head, header, first, second, third = blocks[2].splitlines()
    assert (head, header.split()) == (
        "near: 3 images",
        ["#", "distance", "verdict", "match", "image"],
    )
    assert first.split() == ["1", "0.0000", "-", "-", str(library / "rocket.jpg")]
    assert second.split()[2:] == ["edited", "1", str(library / "sub" / "rocket-dark.jpg")]
    assert blocks[3].splitlines()[2].split()[-3:] == [
        str(library / "coffee.jpg"),
        "(+1",
        "identical)",
    ]
    assert blocks[4] == (
        "4 clusters (2 identical, 2 near) among 15 images (threshold 0.15, verified)"
    )
    code, out, _ = await run("duplicates", "--json", "--folder", "sub", "--threshold", "0.1")
    body = json.loads(out)
    assert code == 0 and body["folder"] == str(library / "sub") and body["threshold"] == 0.1
    assert [c["kind"] for c in body["clusters"]] == ["identical", "near", "near"]
    code, out, _ = await run("duplicates", "--folder", "broken")
    assert (code, out) == (0, "no duplicates among 2 images (threshold 0.15, verified)\n")
    code, out, err = await run("duplicates", "--threshold", "3")
    assert (code, out) == (1, "") and err.startswith("error: threshold must be between 0 and 2")
    code, _, err = await run("duplicates", "--threshold", "many")
    assert code == 2 and "--threshold" in err


async def test_a_run_that_would_not_fit_in_memory_is_a_507(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10M images the vectors alone are 20 GB: the kernel killed the daemon instead."""
    import imgsearch.duplicates as finding

    monkeypatch.setattr(finding, "available_mb", lambda: 0.01)
    body = await get_json(client, "/duplicates", 507, threshold="0.25")
    assert "GB of memory" in body["error"] and "narrow it with folder= or where=" in body["error"]
    monkeypatch.setattr(finding, "available_mb", lambda: None)  # unknown: it runs
    assert (await get_json(client, "/duplicates", threshold="0.25"))["images"] > 0
