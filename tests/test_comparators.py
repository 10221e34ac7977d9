"""Comparators on real photos and generated edits; registry, feature cache, re-ranking."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from imgsearch.comparators import (
    WORKING_SIZE,
    Candidate,
    Comparator,
    ComparatorRegistry,
    FeatureCache,
    Picture,
    Score,
    load_picture,
    rerank,
)
from imgsearch.comparators import registry as registry_module
from imgsearch.errors import BadRequest

from .helpers import Brightness

BUILTINS = ("basic", "sift", "ssim", "histogram", "orb", "verify")
GEOMETRIC = ("sift", "orb", "verify")
RAW_RANGES = {
    "basic": (-1.0, 1.0),
    "ssim": (-1.0, 1.0),
    "histogram": (-1.0, 1.0),
    "sift": (0.0, math.inf),
    "orb": (0.0, 256.0),
    "verify": (0.0, math.inf),
}
# Versions of an image file (mtime_ns, ctime_ns, size), as the feature cache keys them.
V100 = (100, 100, 100)
V7 = (7, 7, 7)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
EDITED = PHOTOS[:3]  # the photos that also get edited copies


# -- generated images --------------------------------------------------------------------------


def sample(name: str) -> np.ndarray:
    arr = np.asarray(getattr(skdata, name)())
    return np.ascontiguousarray(np.dstack([arr] * 3) if arr.ndim == 2 else arr[:, :, :3])


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def copy(rgb: np.ndarray) -> np.ndarray:
    """Same picture: half size, JPEG quality 50."""
    return jpeg(cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), 50)


def crop(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    return np.ascontiguousarray(rgb[: int(height * 0.6), int(width * 0.3) :])


def rotate(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), 15, 1.0)
    return cv2.warpAffine(rgb, matrix, (width, height))


def caption(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    height, width = out.shape[:2]
    scale = width / 512
    org = (int(width * 0.1), int(height * 0.55))
    cv2.putText(out, "SALE 50%", org, cv2.FONT_HERSHEY_SIMPLEX, 2 * scale, (255, 255, 255), 4)
    return out


def inset(rgb: np.ndarray) -> np.ndarray:
    """A screenshot: the picture at half the canvas width, pasted on a plain page."""
    canvas = np.full((700, 900, 3), 235, np.uint8)
    small = cv2.resize(rgb, None, fx=450 / rgb.shape[1], fy=450 / rgb.shape[1])
    canvas[60 : 60 + small.shape[0], 80 : 80 + small.shape[1]] = small
    return canvas


EDITS = {"copy": copy, "crop": crop, "rotate": rotate, "caption": caption, "inset": inset}


def hostile() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    gray = cv2.cvtColor(sample("chelsea"), cv2.COLOR_RGB2GRAY)
    return {
        "flat": np.full((300, 400, 3), 128, np.uint8),
        "black": np.zeros((64, 64, 3), np.uint8),
        "4x4": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
        "5x5": rng.integers(0, 256, (5, 5, 3), dtype=np.uint8),
        "1x1": np.full((1, 1, 3), 200, np.uint8),
        "line": rng.integers(0, 256, (1, 700, 3), dtype=np.uint8),
        "grayscale": np.dstack([gray] * 3),
        "noise": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
    }


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> ComparatorRegistry:
    return ComparatorRegistry.builtins()


@pytest.fixture(scope="module")
def pictures() -> dict[str, Picture]:
    """Originals by name, and edits as '<photo>/<edit>'."""
    out = {name: Picture.from_rgb(sample(name)) for name in PHOTOS}
    for name in EDITED:
        for edit, make in EDITS.items():
            out[f"{name}/{edit}"] = Picture.from_rgb(make(sample(name)))
    return out


@pytest.fixture(scope="module")
def features(registry: ComparatorRegistry, pictures: dict[str, Picture]) -> dict[str, Any]:
    """features[comparator][picture key]."""
    return {
        name: {key: registry.get(name).features(pic) for key, pic in pictures.items()}
        for name in BUILTINS
    }


def compare(
    registry: ComparatorRegistry, features: dict[str, Any], name: str, a: str, b: str
) -> Score:
    return registry.get(name).compare(features[name][a], features[name][b])


def unrelated_best(
    registry: ComparatorRegistry, features: dict[str, Any], name: str, a: str
) -> float:
    return max(compare(registry, features, name, a, other).score for other in PHOTOS if other != a)


# -- Picture and Score -------------------------------------------------------------------------


def test_picture_is_reduced_to_working_size() -> None:
    big = cv2.resize(sample("coffee"), (2000, 1333))
    picture = Picture.from_pil(Image.fromarray(big))
    assert max(picture.rgb.shape[:2]) == WORKING_SIZE
    assert picture.gray.shape == picture.rgb.shape[:2]
    assert picture.rgb.dtype == picture.gray.dtype == np.uint8
    assert not picture.rgb.flags.writeable
    small = Picture.from_rgb(sample("chelsea"))
    assert small.rgb.shape == sample("chelsea").shape  # never enlarged


def test_picture_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError):
        Picture.from_rgb(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        Picture.from_rgb(np.zeros((4, 4, 3), np.float32))


def test_load_picture_reaches_working_size(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(cv2.resize(sample("astronaut"), (3000, 3000))).save(path, quality=85)
    picture = load_picture(path, max_file_bytes=50_000_000, max_pixels=100_000_000)
    assert picture.rgb.shape == (WORKING_SIZE, WORKING_SIZE, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK", "1"])
def test_load_picture_odd_modes(
    tmp_path: Path, registry: ComparatorRegistry, features: dict[str, Any], mode: str
) -> None:
    rgb = sample("chelsea")
    if mode == "I;16":
        img = Image.fromarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    else:
        img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("odd.jpg" if mode == "CMYK" else "odd.png")
    img.save(path)
    picture = load_picture(path, max_file_bytes=10_000_000, max_pixels=10_000_000)
    assert picture.rgb.shape == (300, 451, 3)
    for name in BUILTINS:
        comparator = registry.get(name)
        score = comparator.compare(features[name]["chelsea"], comparator.features(picture))
        assert 0.0 <= score.score <= 1.0
        if name == "verify" and mode in {"L", "RGBA", "P", "CMYK"}:
            assert score.extra["verdict"] == "duplicate"


def test_score_as_json_gives_numbers() -> None:
    score = Score(np.float64(12.0), 0.8, {"inliers": np.int64(12), "ratio": np.float32(0.5)})
    out = json.loads(json.dumps(score.as_json()))
    assert out == {"raw": 12.0, "score": 0.8, "inliers": 12, "ratio": 0.5}
    assert Score(math.nan, math.inf).as_json() == {"raw": 0.0, "score": 0.0}


# -- every comparator --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_identical_beats_copy_beats_unrelated(
    registry: ComparatorRegistry, features: dict[str, Any], name: str
) -> None:
    for photo in EDITED:
        identical = compare(registry, features, name, photo, photo).score
        copied = compare(registry, features, name, photo, f"{photo}/copy").score
        assert identical >= copied > unrelated_best(registry, features, name, photo), photo
        assert identical >= 0.99


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("edit", ["crop", "rotate", "caption", "inset"])
def test_geometric_comparators_see_through_edits(
    registry: ComparatorRegistry, features: dict[str, Any], name: str, edit: str
) -> None:
    for photo in EDITED:
        edited = compare(registry, features, name, photo, f"{photo}/{edit}").score
        assert edited > unrelated_best(registry, features, name, photo), photo
        # and the other way round: the edit as the query
        assert compare(registry, features, name, f"{photo}/{edit}", photo).score > 0.3


@pytest.mark.slow  # every picture against three, both ways, per comparator
@pytest.mark.parametrize("name", BUILTINS)
def test_scores_and_raw_values_in_range(
    registry: ComparatorRegistry, features: dict[str, Any], name: str
) -> None:
    low, high = RAW_RANGES[name]
    for a in features[name]:
        for b in ("astronaut", "coffee/inset", "rocket"):
            for score in (
                compare(registry, features, name, a, b),
                compare(registry, features, name, b, a),
            ):
                assert 0.0 <= score.score <= 1.0
                assert low <= score.raw <= high
                json.dumps(score.as_json(), allow_nan=False)


@pytest.mark.parametrize("name", BUILTINS)
def test_comparator_describes_itself(registry: ComparatorRegistry, name: str) -> None:
    comparator = registry.get(name)
    assert isinstance(comparator, Comparator)
    assert comparator.name == name
    for text in (comparator.description, comparator.raw_meaning):
        assert text and "\n" not in text


def test_verify_verdicts(registry: ComparatorRegistry, features: dict[str, Any]) -> None:
    expected = {
        "copy": "duplicate",
        "crop": "edited",
        "rotate": "edited",
        "caption": "edited",
        "inset": "edited",
    }
    for photo in EDITED:
        same = compare(registry, features, "verify", photo, photo)
        assert same.extra["verdict"] == "duplicate"
        for edit, verdict in expected.items():
            score = compare(registry, features, "verify", photo, f"{photo}/{edit}")
            assert score.extra["verdict"] == verdict, (photo, edit, score)
            assert score.extra["inliers"] == score.raw >= 15
            assert 0.25 <= score.extra["inlier_ratio"] <= 1.0
        for other in PHOTOS:
            if other != photo:
                score = compare(registry, features, "verify", photo, other)
                assert score.extra["verdict"] == "similar"
                assert score.score == 0.0
    duplicate = compare(registry, features, "verify", "astronaut", "astronaut/copy").score
    edited = compare(registry, features, "verify", "astronaut", "astronaut/crop").score
    assert duplicate >= 0.9 > edited >= 0.5


def test_hostile_pictures_never_raise(
    registry: ComparatorRegistry, features: dict[str, Any], pictures: dict[str, Picture]
) -> None:
    odd = {key: Picture.from_rgb(rgb) for key, rgb in hostile().items()}
    for name in BUILTINS:
        comparator = registry.get(name)
        odd_features = {key: comparator.features(pic) for key, pic in odd.items()}
        photo = features[name]["astronaut"]
        for key, feats in odd_features.items():
            pickle.loads(pickle.dumps(feats))
            for score in [comparator.compare(feats, photo), comparator.compare(photo, feats)] + [
                comparator.compare(feats, other) for other in odd_features.values()
            ]:
                assert 0.0 <= score.score <= 1.0, (name, key)
                assert RAW_RANGES[name][0] <= score.raw <= RAW_RANGES[name][1], (name, key)
                json.dumps(score.as_json(), allow_nan=False)
            if name in GEOMETRIC and key in {"flat", "black", "4x4", "5x5", "1x1", "line"}:
                assert comparator.compare(feats, photo).score == 0.0, (name, key)


def test_comparators_are_thread_safe(
    registry: ComparatorRegistry, features: dict[str, Any], pictures: dict[str, Picture]
) -> None:
    pairs = [("astronaut", "astronaut/crop"), ("chelsea", "chelsea/rotate"), ("coffee", "rocket")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name in BUILTINS:
            comparator = registry.get(name)
            jobs = [pool.submit(comparator.compare, *(features[name][k] for k in p)) for p in pairs]
            assert [job.result() for job in jobs] == [
                compare(registry, features, name, *p) for p in pairs
            ]
        verify = registry.get("verify")
        keys = ["chelsea", "rocket", "chelsea", "rocket"]
        got = list(pool.map(verify.features, (pictures[key] for key in keys)))
    for key, feats in zip(keys, got, strict=True):
        expected = features["verify"][key]
        assert np.array_equal(feats.keypoints.points, expected.keypoints.points)
        assert np.array_equal(feats.keypoints.descriptors, expected.keypoints.descriptors)


# -- registry ----------------------------------------------------------------------------------


def test_registry_parse(registry: ComparatorRegistry) -> None:
    chosen = registry.parse(["basic", "sift,orb", " SIFT ", "basic,,", ""])
    assert [c.name for c in chosen] == ["basic", "sift", "orb"]
    assert registry.parse([]) == []
    assert registry.names() == list(BUILTINS)


@pytest.mark.parametrize("values", [["nope"], ["sift,nope"], ["sift", "../etc"]])
def test_registry_unknown_name(registry: ComparatorRegistry, values: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        registry.parse(values)
    assert caught.value.status == 400
    for name in BUILTINS:
        assert name in caught.value.message
    with pytest.raises(BadRequest):
        registry.get("nope")


def test_registry_custom_comparator(pictures: dict[str, Picture]) -> None:
    registry = ComparatorRegistry.builtins()
    registry.register(Brightness())
    assert "brightness" in registry and len(registry) == 7
    (chosen,) = registry.parse(["brightness"])
    assert chosen.compare(*(chosen.features(pictures["astronaut"]) for _ in "ab")).score == 1.0
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Brightness())
    with pytest.raises(TypeError):
        registry.register(object())  # type: ignore[arg-type]
    bad = Brightness()
    bad.name = "Bad Name"
    with pytest.raises(ValueError, match="must match"):
        registry.register(bad)


def test_registry_from_entry_points() -> None:
    registry = ComparatorRegistry.from_entry_points()
    assert sorted(registry.names()) == sorted(BUILTINS)


def test_registry_skips_broken_entry_points(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = "imgsearch.test-comparators"
    points = [
        EntryPoint("brightness", f"{__name__}:Brightness", group),
        EntryPoint("missing", "imgsearch.no_such_module:Nothing", group),
        EntryPoint("not-a-comparator", "builtins:object", group),
        EntryPoint("sift", "imgsearch.comparators.sift:SiftComparator", group),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: points)
    with caplog.at_level(logging.ERROR, logger=registry_module.__name__):
        registry = ComparatorRegistry.from_entry_points(group)
    assert registry.names() == ["brightness", "sift"]
    assert "missing" in caplog.text and "not-a-comparator" in caplog.text


# -- feature cache -----------------------------------------------------------------------------


def test_feature_cache_round_trip(
    tmp_path: Path, registry: ComparatorRegistry, features: dict[str, Any]
) -> None:
    cache = FeatureCache(tmp_path / "features")
    for name in BUILTINS:
        assert cache.get(name, 1, V100) is None
        cache.put(name, 1, V100, features[name]["astronaut/crop"])
        cache.put(name, 2, V100, features[name]["chelsea"])
    fresh = FeatureCache(tmp_path / "features")  # as after a restart
    for name in BUILTINS:
        loaded = fresh.get(name, 1, V100)
        assert loaded is not None
        comparator = registry.get(name)
        original = features[name]["astronaut"]
        assert comparator.compare(original, loaded) == comparator.compare(
            original, features[name]["astronaut/crop"]
        )
        assert fresh.get(name, 1, (101, 100, 100)) is None  # the file changed since
    fresh.invalidate(1)
    assert all(fresh.get(name, 1, V100) is None for name in BUILTINS)
    assert all(fresh.get(name, 2, V100) is not None for name in BUILTINS)
    assert not list((tmp_path / "features").glob("*/*/.tmp-*"))


def test_feature_cache_newer_version_replaces(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put("sift", 5, (1, 1, 10), np.arange(3))
    cache.put("sift", 5, (1, 2, 10), np.arange(4))  # the same mtime, written again (cp -p)
    assert cache.get("sift", 5, (1, 1, 10)) is None
    assert cache.get("sift", 5, (1, 2, 10)).tolist() == [0, 1, 2, 3]
    assert cache.get("sift", 5, (1, 2, 11)) is None  # the same times, another size
    with pytest.raises(ValueError):
        cache.put("../x", 5, (1, 2, 10), 1)


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_feature_cache_refuses_foreign_or_damaged_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path)
    cache.put("orb", 1, V7, np.zeros(2))
    path = cache.files.path("features/orb", 1)
    assert path.exists()
    cache.files.write("features/orb", 1, V7, pickle.dumps((2, _Exploit())))
    with caplog.at_level(logging.WARNING):
        assert cache.get("orb", 1, V7) is None
    assert "refusing" in caplog.text and not path.exists()
    cache.files.write("features/orb", 1, V7, b"not a pickle")
    assert cache.get("orb", 1, V7) is None and not path.exists()
    path.write_bytes(b"x")  # shorter than the header
    assert cache.get("orb", 1, V7) is None and not path.exists()
    (path.parent / ".tmp-stray").write_bytes(b"half")
    os.utime(path.parent / ".tmp-stray", (1, 1))  # left by an earlier run
    FeatureCache(tmp_path).files.sweep(lambda ids: ids, threading.Event())
    assert not (path.parent / ".tmp-stray").exists()


def _short(text: str) -> bytes:
    """A pickle SHORT_BINUNICODE opcode and its text."""
    return b"\x8c" + bytes([len(text.encode())]) + text.encode()


@dataclass(frozen=True)
class _PluginFeatures:
    mean: float


def test_feature_cache_refuses_dotted_names_and_keeps_plain_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A capitalised name of any imgsearch.comparators module was let through, dotted ones
    too (pickle looks `Path.write_text` up attribute by attribute): a planted file wrote
    anywhere. numpy scalars (`gray.mean()`) were refused: a plugin's features were read,
    refused and made again for every candidate of every search, with a warning each time."""
    cache = FeatureCache(tmp_path)
    victim = tmp_path / "victim"
    module = _short("imgsearch.comparators.cache")  # (which imports Path)
    planted = (  # Path.write_text(Path(victim), text), by STACK_GLOBAL and REDUCE
        b"\x80\x04" + module + _short("Path.write_text") + b"\x93"
        + module + _short("Path") + b"\x93" + _short(str(victim)) + b"\x85R"
        + _short("written by a cache file") + b"\x86R."
    )  # fmt: skip
    cache.files.write("features/orb", 1, V7, planted)
    with caplog.at_level(logging.WARNING):
        assert cache.get("orb", 1, V7) is None
    assert not victim.exists() and "refusing" in caplog.text
    values = [np.float64(3.5), np.float32(1.25), {1, 2}, (1, [2.0], {"a": b"b"}), None, 7]
    for image_id, value in enumerate(values):
        cache.put("brightness", image_id, V7, value)
        assert cache.get("brightness", image_id, V7) == value
    caplog.clear()
    cache.put("brightness", 99, V7, _PluginFeatures(1.0))  # refused on reading: not kept
    assert not cache.files.path("features/brightness", 99).exists()
    cache.put("brightness", 100, V7, _PluginFeatures(2.0))
    assert caplog.text.count("not cached") <= 1


def test_feature_cache_concurrent_writers(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)

    def work(i: int) -> None:
        cache.put("ssim", i % 3, V7, np.full(1000, i % 3))
        got = cache.get("ssim", i % 3, V7)
        assert got is not None and int(got[0]) == i % 3

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(200)))


# -- re-ranking with real comparators ----------------------------------------------------------


@pytest.mark.slow  # every comparator over a gallery
def test_rerank_never_worsens_recall_at_1(
    registry: ComparatorRegistry, features: dict[str, Any]
) -> None:
    """Edited copies as queries; the database holds the five originals. Embedding similarities
    are synthetic (seeded) and often put the true original below a distractor."""
    rng = np.random.default_rng(3)
    names = ("verify", "sift", "histogram", "ssim", "basic")
    before = after = after_weak = 0
    queries = [f"{photo}/{edit}" for photo in EDITED for edit in EDITS]
    for query in queries:
        truth = query.split("/")[0]
        similarity = {photo: float(rng.uniform(0.55, 0.95)) for photo in PHOTOS}
        order = sorted(PHOTOS, key=lambda photo: -similarity[photo])
        scores = {
            photo: {n: compare(registry, features, n, query, photo) for n in names}
            for photo in order
        }

        def candidates(
            comparators: tuple[str, ...],
            order: list[str] = order,
            similarity: dict[str, float] = similarity,
            scores: dict[str, dict[str, Score]] = scores,
        ) -> list[Candidate]:
            return [
                Candidate(
                    PHOTOS.index(photo),
                    similarity[photo],
                    {n: scores[photo][n] for n in comparators},
                )
                for photo in order
            ]

        before += order[0] == truth
        after += PHOTOS[rerank(candidates(names))[0].id] == truth
        after_weak += PHOTOS[rerank(candidates(("histogram", "ssim")))[0].id] == truth
    assert before < len(queries)  # the synthetic embedding does make mistakes
    assert after == len(queries)
    assert after_weak >= before


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_ratio_matches_equal_opencv_brute_force(int8: bool) -> None:
    """Both matchers (fp32 BLAS, int8 product) find exactly what cv2.BFMatcher.knnMatch + the
    ratio test finds."""
    import cv2

    from imgsearch.comparators.keypoints import ratio_matches
    from imgsearch.comparators.sift import sift_keypoints

    full = np.ascontiguousarray(skdata.astronaut())
    query = sift_keypoints(Picture.from_rgb(np.ascontiguousarray(full[60:380, 90:430])))
    for name in ("astronaut", "chelsea", "coffee"):
        cand = sift_keypoints(Picture.from_rgb(np.ascontiguousarray(getattr(skdata, name)())))
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
            query.descriptors.astype(np.float32), cand.descriptors.astype(np.float32), k=2
        )
        best: dict[int, tuple[float, int]] = {}
        for a, b in pairs:
            if a.distance < 0.75 * b.distance and a.distance < best.get(a.trainIdx, (1e9, 0))[0]:
                best[a.trainIdx] = (a.distance, a.queryIdx)
        expected = {(q, t) for t, (_, q) in best.items()}
        found = ratio_matches(query, cand, 0.75, int8=int8)
        assert {tuple(r) for r in found.tolist()} == expected
