"""Copy detection: recall@1/@10 of transformed copies of real photos, per comparator, and latency.

Gallery: real photos available offline (scikit-image, scikit-learn, and the Debian package
opencv-doc when installed), about a third of them "originals", the rest distractors, plus
random crops of the distractors as further distractors. Queries: one transformed copy of each
original per transform (crops, scale, JPEG, rotation, flip, colour, banner, screenshot, blur,
perspective), seeded. Everything runs in-process on the Python API with the bundled offline
model.

Recall: per query, one real `Searcher.by_bytes` with no comparators (embedding only), and
one with all six comparators, limit 10. A spy around `search.rerank` records the candidates
(whole-query similarity and every comparator's score) that the searcher hands to the fusion
step; each mode (one comparator, a fused set, rerank off) is then `rerank` of those
candidates with only that mode's scores, which is what the searcher computes for that mode:
each comparator's score does not depend on the others, and the candidate set depends on the
comparators only in that region candidates (nearest images of parts of the query, all below
the whole query's top `rerank_k` in similarity) are added for a comparator that
`locates_parts` (verify), so modes without one use the first `rerank_k` candidates. The
latency pass runs real searches per mode and counts how many of their hits equal the derived
ones.

Latency: ms per limit-10 search, embedding only, and per mode cold (that mode's feature cache
deleted before every search) and warm (the same queries again, after one untimed pass).

After an add: copies of the timed queries' originals are added as new images (features not
cached), and each query's first compare=verify search right after the add is timed (with
`--precompute auto` the daemon computes the new images' features in the background meanwhile).

Goals: fused recall@1 >= embedding-only on every transform and >= 0.99 overall;
compare=sift and compare=verify add <= 150 ms p50 to a limit-10 search with a warm cache;
compare=verify adds <= 600 ms p50 on the first searches right after an add.

    apt-get install -y opencv-doc   # optional: 31 more photos (8 originals, 23 distractors)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/copydetect.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import cv2
import numpy as np
from _common import cpu_model, percentiles, progress
from PIL import Image

from imgsearch import search as search_module
from imgsearch.comparators import WORKING_SIZE, Candidate, Picture, rerank
from imgsearch.comparators.distances import int8_native
from imgsearch.comparators.keypoints import ratio_matches
from imgsearch.comparators.sift import LOWE_RATIO
from imgsearch.config import OFFLINE_MODEL, Config
from imgsearch.derived import stamp
from imgsearch.images import decode
from imgsearch.search import REGION_BOXES, SearchOptions
from imgsearch.service import Service

LIMIT = 10
GOAL_FUSED_R1 = 0.99
GOAL_SIFT_ADDED_MS = 150.0
GOAL_AFTER_ADD_MS = 600.0
OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
# name -> source; (skimage: a function of skimage.data; sklearn: a sample image; opencv: a file)
ORIGINALS = {
    **dict.fromkeys(
        ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "page"),
        "skimage",
    ),
    "rocket": "skimage",
    # A stereo pair: near-duplicates of each other, each its own original (a hard case).
    **dict.fromkeys(("motorcycle_left", "motorcycle_right"), "skimage"),
    "china.jpg": "sklearn",
    **dict.fromkeys(
        ("baboon.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg", "leuvenA.jpg"), "opencv"
    ),
    **dict.fromkeys(("messi5.jpg", "squirrel_cls.jpg", "sudoku.png"), "opencv"),
}
DISTRACTORS = {
    **dict.fromkeys(
        ("immunohistochemistry", "moon", "retina", "text", "brick", "grass", "gravel", "cell"),
        "skimage",
    ),
    "clock": "skimage",
    "flower.jpg": "sklearn",
    **dict.fromkeys(
        (
            *("aero1.jpg", "aloeL.jpg", "apple.jpg", "basketball1.png", "board.jpg", "box.png"),
            *("chicky_512.png", "ela_original.jpg", "graf1.png", "home.jpg", "left.jpg"),
            *("licenseplate_motion.jpg", "orange.jpg", "rubberwhale1.png", "smarties.png"),
            *("starry_night.jpg", "stuff.jpg", "text_defocus.jpg", "left01.jpg", "left05.jpg"),
            *("left09.jpg", "right03.jpg", "right12.jpg"),
        ),
        "opencv",
    ),
}
QUICK_ORIGINALS = ("astronaut", "motorcycle_left", "motorcycle_right")
QUICK_TRANSFORMS = ("crop15", "rot90", "banner", "screenshot", "perspective")
COMPARATORS = ("basic", "sift", "ssim", "histogram", "orb", "verify")
# mode -> (comparators, rerank); "embedding" is the search without comparators.
MODES: dict[str, tuple[tuple[str, ...], bool]] = {
    "embedding": ((), True),
    **{name: ((name,), True) for name in COMPARATORS},
    "sift+verify": (("sift", "verify"), True),
    "all six": (COMPARATORS, True),
    "seed-style": (("sift", "verify"), False),  # annotate only: comparators, rerank off
}
FUSED = ("verify", "sift+verify", "all six")
TIMED = ("embedding", *COMPARATORS, "sift+verify", "seed-style")
COLD = TIMED[:-1]  # seed-style computes exactly what sift+verify does: warm only


# -- photos ----------------------------------------------------------------------------------


def _rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def load_photo(name: str, source: str) -> np.ndarray | None:
    """A photo as uint8 RGB, or None when its source is not installed."""
    if source == "skimage":
        from skimage import data as skdata

        if name.startswith("motorcycle_"):
            left, right, _ = skdata.stereo_motorcycle()
            return _rgb(left if name.endswith("left") else right)
        return _rgb(getattr(skdata, name)())
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return _rgb(load_sample_image(name))
    bgr = cv2.imread(str(OPENCV_DOC / name), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def build_gallery(folder: Path, originals: dict[str, np.ndarray], quick: bool, seed: int) -> int:
    """Write originals, distractors and random crops of distractors as PNGs; return the count."""
    rng = np.random.default_rng(seed)
    for name, rgb in originals.items():
        Image.fromarray(rgb).save(folder / f"o_{name}.png")
    count = len(originals)
    distractors = list(DISTRACTORS.items())[: 6 if quick else None]
    for name, source in distractors:
        photo = load_photo(name, source)
        if photo is None:
            continue
        Image.fromarray(photo).save(folder / f"d_{_stem(name)}.png")
        crop = _crop(photo, rng.uniform(0.3, 0.5), rng)  # a "new photo" taken from it
        Image.fromarray(crop).save(folder / f"g_{_stem(name)}.png")
        count += 2
    return count


# -- transforms ------------------------------------------------------------------------------


Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _crop(rgb: np.ndarray, area: float, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    ch, cw = max(8, round(h * area**0.5)), max(8, round(w * area**0.5))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return rgb[y : y + ch, x : x + cw].copy()


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=interpolation)


def _rotate(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """7 degrees counter-clockwise on a canvas grown to hold it, corners black."""
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 7.0, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def _colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue +50 degrees, saturation x1.5, then a warm tint (so grey photos change too)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + 25) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.5, 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    tinted: np.ndarray = np.clip(out * np.array([1.15, 1.0, 0.8]), 0, 255).astype(np.uint8)
    return tinted


def _gray(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: Any) -> None:
    thick = max(1, round(scale * 2))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _banner(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A coloured border, a white caption band on top and a dark credit strip below."""
    h, w = rgb.shape[:2]
    pad, top, bottom = max(4, w // 25), max(24, h // 7), max(16, h // 14)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    bordered = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=colour)
    top_band = np.full((top, bordered.shape[1], 3), 255, np.uint8)
    _text(top_band, "WHEN YOU SEE IT", (pad, int(top * 0.7)), top / 45, (0, 0, 0))
    bottom_band = np.full((bottom, bordered.shape[1], 3), 30, np.uint8)
    _text(
        bottom_band, "@someone  shared via app", (pad, int(bottom * 0.75)), bottom / 40, (230,) * 3
    )
    return np.vstack([top_band, bordered, bottom_band])


def _screenshot(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo at 20-30% of a 1280x800 UI-like canvas with bars, a sidebar and text."""
    cw, ch = 1280, 800
    canvas = np.full((ch, cw, 3), 242, np.uint8)
    canvas[:48] = (45, 52, 64)
    canvas[48:, :220] = (225, 228, 232)
    _text(canvas, "Photos - Viewer", (16, 32), 0.8, (255, 255, 255))
    for i, label in enumerate(("Library", "Albums", "Shared", "Recent", "Trash")):
        _text(canvas, label, (20, 100 + 40 * i), 0.7, (60, 60, 60))
    h, w = rgb.shape[:2]
    scale = (rng.uniform(0.2, 0.3) * cw * ch / (w * h)) ** 0.5
    scale = min(scale, (cw - 260) / w, (ch - 120) / h)
    photo = _resize(rgb, scale)
    ph, pw = photo.shape[:2]
    x = int(rng.integers(240, cw - pw - 19))
    y = int(rng.integers(64, ch - ph - 55))
    canvas[y : y + ph, x : x + pw] = photo
    _text(
        canvas, "IMG_2041.JPG  4032 x 3024  2.4 MB", (x, min(ch - 12, y + ph + 30)), 0.6, (0,) * 3
    )
    return canvas


def _perspective(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each corner pulled inward by 5-15% of the side, as a photo of a screen; grey outside."""
    h, w = rgb.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    jitter = rng.uniform(0.05, 0.15, (4, 2)) * np.array([w, h])
    sign = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    m = cv2.getPerspectiveTransform(src, (src + sign * jitter).astype(np.float32))
    return cv2.warpPerspective(rgb, m, (w, h), borderValue=(90, 90, 90))


TRANSFORMS: dict[str, tuple[Transform, str, int]] = {
    # name: (function, format, JPEG quality)
    "crop50": (lambda a, r: _crop(a, 0.5, r), "JPEG", 90),
    "crop15": (lambda a, r: _crop(a, 0.15, r), "JPEG", 90),
    "scale25": (lambda a, r: _resize(a, 0.25), "JPEG", 90),
    "jpeg10": (lambda a, r: a, "JPEG", 10),
    "rot90": (lambda a, r: np.ascontiguousarray(np.rot90(a)), "JPEG", 90),
    "rot7": (_rotate, "JPEG", 90),
    "flip": (lambda a, r: np.ascontiguousarray(a[:, ::-1]), "JPEG", 90),
    "gray": (_gray, "JPEG", 90),
    "colour": (_colour, "JPEG", 90),
    "banner": (_banner, "JPEG", 90),
    "screenshot": (_screenshot, "PNG", 0),
    "blur": (lambda a, r: cv2.GaussianBlur(a, (0, 0), max(2.0, max(a.shape) / 200)), "JPEG", 90),
    "perspective": (_perspective, "JPEG", 90),
}


@dataclass(frozen=True)
class Query:
    original: str
    transform: str
    data: bytes


def make_queries(
    originals: dict[str, np.ndarray], transforms: Sequence[str], seed: int
) -> list[Query]:
    rng = np.random.default_rng(seed + 1)
    queries = []
    for name, rgb in originals.items():
        for t in transforms:
            function, fmt, quality = TRANSFORMS[t]
            buf = io.BytesIO()
            options = {"quality": quality} if fmt == "JPEG" else {}
            Image.fromarray(function(rgb, rng)).save(buf, fmt, **options)
            queries.append(Query(name, t, buf.getvalue()))
    return queries


# -- searching -------------------------------------------------------------------------------


class Bench:
    """A Service on a fresh data dir holding the gallery, and the searches we run on it."""

    def __init__(self, service: Service, names: dict[int, str]) -> None:
        self.service = service
        self.names = names  # image id -> gallery file stem
        self.captured: list[Candidate] = []
        self.derived: dict[tuple[Query, str], list[str]] = {}  # from run_recall

    def search(
        self, query: Query, names: Sequence[str], rerank_on: bool = True
    ) -> tuple[list[str], float, float]:
        """Gallery names of the hits, and the wall and CPU (all threads) ms the search took."""
        comparators = self.service.comparators.parse(list(names))
        options = SearchOptions(limit=LIMIT, comparators=comparators, rerank=rerank_on)
        start, cpu = time.perf_counter(), time.process_time()
        hits = self.service.searcher.by_bytes(query.data, options)
        ms, cpu_ms = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
        return [Path(h.image).stem for h in hits], ms, cpu_ms

    def search_mode(self, query: Query, mode: str) -> tuple[list[str], float, float]:
        return self.search(query, *MODES[mode])

    @contextmanager
    def spy(self) -> Iterator[None]:
        """Record the candidates each search hands to the fusion step."""

        def recording(candidates: Sequence[Candidate], *args: Any, **kwargs: Any) -> Any:
            self.captured = list(candidates)
            return rerank(candidates, *args, **kwargs)

        with mock.patch.object(search_module, "rerank", recording):
            yield

    def derive(self, mode: str) -> list[str]:
        """The mode's top hits, from the last captured candidates (see the module docstring)."""
        names, rerank_on = MODES[mode]
        captured = self.captured
        if self.whole_query_only(mode):  # region candidates come after the whole query's
            captured = captured[: SearchOptions(limit=LIMIT).candidates]
        subset = [
            Candidate(c.id, c.similarity, {k: s for k, s in c.scores.items() if k in names})
            for c in captured
        ]
        ranked = rerank(subset)
        if not rerank_on:
            ranked.sort(key=lambda r: r.rank_before)
        return [self.names[r.id] for r in ranked[:LIMIT]]

    def whole_query_only(self, mode: str) -> bool:
        """Whether the mode's searches skip region candidates (no comparator locates parts)."""
        chosen = self.service.comparators.parse(list(MODES[mode][0]))
        return not any(getattr(c, "locates_parts", False) for c in chosen)

    def drop_features(self, mode: str) -> None:
        for name in MODES[mode][0]:
            shutil.rmtree(self.service.features.directory / name, ignore_errors=True)


def run_recall(bench: Bench, queries: Sequence[Query]) -> tuple[dict[str, list[int]], list[float]]:
    """Rank of the original (1-based, 0 = not in the top 10) per mode and query; embedding ms."""
    ranks: dict[str, list[int]] = {mode: [] for mode in MODES}
    embedding_ms = []
    for i, q in enumerate(queries, start=1):
        if i % 20 == 1 or i == len(queries):
            progress(f"recall: query {i}/{len(queries)} ({q.original}, {q.transform})")
        hits, ms, _ = bench.search(q, ())
        embedding_ms.append(ms)
        ranks["embedding"].append(_rank(hits, q))
        with bench.spy():
            bench.search(q, COMPARATORS)
        for mode in MODES:
            if mode != "embedding":
                bench.derived[q, mode] = bench.derive(mode)
                ranks[mode].append(_rank(bench.derived[q, mode], q))
    return ranks, embedding_ms


def _rank(hits: Sequence[str], query: Query) -> int:
    target = f"o_{query.original}"
    return hits.index(target) + 1 if target in hits else 0


def run_timing(
    bench: Bench, queries: Sequence[Query], modes: Sequence[str] = TIMED
) -> tuple[dict[str, Any], int, int]:
    """p50/p95 ms per mode, cold and warm; and how many real searches matched the derived hits."""
    timing: dict[str, Any] = {}
    agree = total = 0
    for mode in modes:
        cold, warm, cpu, found = [], [], [], []
        for q in queries if mode in COLD else ():
            bench.drop_features(mode)
            cold.append(bench.search_mode(q, mode)[1])
        # An untimed pass first: the pass right after the cold one measured up to 2x slower
        # than the next ones, with the same cache.
        for q in queries:
            bench.search_mode(q, mode)
        for q in queries:
            with bench.spy():
                hits, ms, cpu_ms = bench.search_mode(q, mode)
            warm.append(ms)
            cpu.append(cpu_ms)
            found.append(len(bench.captured) if mode != "embedding" else 0)
            if (q, mode) in bench.derived:
                total += 1
                agree += hits == bench.derived[q, mode]
        timing[mode] = {
            "cold": percentiles(cold, (50, 95)),
            "warm": percentiles(warm, (50, 95)),
            "warm_cpu": percentiles(cpu, (50, 95)),
            "candidates": float(np.mean(found)),
        }
        progress(f"timing {mode}: warm p50 {timing[mode]['warm']['p50']:.0f} ms")
    return timing, agree, total


def run_after_add(bench: Bench, queries: Sequence[Query], gallery: Path) -> dict[str, Any]:
    """ms of each query's first compare=verify search right after adding copies of the
    queries' originals (new ids: no cached features unless precompute made them)."""
    fresh = gallery.parent / "fresh"
    fresh.mkdir(exist_ok=True)
    for q in queries:
        target = fresh / f"n_{q.original}.png"
        if not target.exists():
            shutil.copy(gallery / f"o_{q.original}.png", target)
    progress(f"after-add: adding {len(list(fresh.glob('*.png')))} copies, then searching")
    bench.service.ingester.add(fresh.resolve())
    ms = [bench.search_mode(q, "verify")[1] for q in queries]
    embedding = [bench.search(q, ())[1] for q in queries]
    return {
        "verify_first": percentiles(ms, (50, 95)),
        "embedding": percentiles(embedding, (50, 95)),
        "precompute": bench.service.precompute.stats(),
    }


def sift_stages(
    bench: Bench, queries: Sequence[Query], modes: Sequence[str] = ()
) -> dict[str, float]:
    """Median ms per query: whole searches without and with sift, and sift's steps alone."""
    service = bench.service
    embedder, sift = service.embedder, service.comparators.get("sift")
    verify = service.comparators.get("verify") if "verify" in modes else None
    pixels = service.config.max_image_pixels
    regions = getattr(sift, "locates_parts", False)
    steps: dict[str, list[float]] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        steps.setdefault(name, []).append((time.perf_counter() - start) * 1000)

    for q in queries:
        with step("search, embedding only"):
            bench.search(q, ())
        with bench.spy(), step("search, compare=sift (warm)"):
            bench.search(q, ("sift",))
        with step(f"  decode at working size, embed {6 if regions else 1} view(s)"):
            image = decode(q.data, min_side=WORKING_SIZE, max_pixels=pixels).image
            views = [image, *(_region(image, box) for box in REGION_BOXES)] if regions else [image]
            embedder.embed_images(views)
        with step("  query SIFT features"):
            query = sift.features(Picture.from_pil(image))
        ids = [c.id for c in bench.captured]
        paths = service.catalog.store.paths(ids)
        with step("  feature cache reads (all candidates)"):
            cached = [service.features.get("sift", i, stamp(os.stat(paths[i].path))) for i in ids]
        product = "int8" if int8_native() else "fp32"
        with step(f"  SIFT matching (all candidates, 1 thread, {product})"):
            for candidate in cached:
                sift.compare(query, candidate)
        if product == "int8":  # the same matches with the fp32 product, for comparison
            with step("  SIFT matching (same, fp32 instead of int8)"):
                for candidate in cached:
                    ratio_matches(query, candidate, LOWE_RATIO, int8=False)
        if verify is not None:  # the same candidates, matching + RANSAC + the pixel check
            with step(f"  embed the {1 + len(REGION_BOXES)} views verify asks for (1 call)"):
                embedder.embed_images([image, *(_region(image, box) for box in REGION_BOXES)])
            picture = Picture.from_pil(image)
            query_v = verify.features(picture)
            found = [service.features.get("verify", i, stamp(os.stat(paths[i].path))) for i in ids]
            with step("  verify (same candidates, 1 thread)"):
                for candidate in found:
                    if candidate is not None:
                        verify.compare(query_v, candidate)
    return {name: float(np.median(ms)) for name, ms in steps.items()}


def _region(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = image.size
    return image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))


def timing_queries(queries: Sequence[Query], n: int) -> list[Query]:
    """n queries spread over transforms and originals (one transform, then the next, ...)."""
    by_transform: dict[str, list[Query]] = {}
    for q in queries:
        by_transform.setdefault(q.transform, []).append(q)
    picked: list[Query] = []
    for round_ in range(max(len(v) for v in by_transform.values())):
        for i, qs in enumerate(by_transform.values()):
            if len(picked) < n:
                picked.append(qs[(round_ + 3 * i) % len(qs)])
    return picked


# -- report ----------------------------------------------------------------------------------


def summarise(ranks: dict[str, list[int]], queries: Sequence[Query]) -> dict[str, Any]:
    """recall@1 and recall@10 per mode, per transform and overall."""
    transforms = list(dict.fromkeys(q.transform for q in queries))
    out: dict[str, Any] = {}
    for mode, rs in ranks.items():
        rows: dict[str, dict[str, float]] = {}
        for t in [*transforms, "overall"]:
            picked = [r for r, q in zip(rs, queries, strict=True) if t in ("overall", q.transform)]
            rows[t] = {
                "r1": sum(r == 1 for r in picked) / len(picked),
                "r10": sum(r >= 1 for r in picked) / len(picked),
            }
        out[mode] = rows
    return out


def print_recall(doc: dict[str, Any]) -> None:
    recall = doc["recall"]
    modes = list(recall)
    rows = list(recall["embedding"])
    for key, label in (("r1", "recall@1"), ("r10", "recall@10")):
        print(f"\n{label} per transform (rows) and mode (columns)\n")
        print(f"{'':<12}" + "".join(f"{m:>12}" for m in modes))
        for t in rows:
            print(f"{t:<12}" + "".join(f"{recall[m][t][key]:>12.3f}" for m in modes))


def print_timing(doc: dict[str, Any]) -> None:
    start, before, after = doc["load_average"]
    print(f"\nms per limit-{LIMIT} search, {doc['timed_queries']} queries: p50 / p95 (1-min load")
    print(f"average {start:.1f} at start, {before:.1f} / {after:.1f} around this pass; ", end="")
    print(f"{doc['cpus']} CPUs)\n")
    if start > (doc["cpus"] or 1) / 2:
        print("WARNING: the machine was busy at start; wall-clock figures are inflated\n")
    head = ("mode", "cold", "warm", "warm CPU", "candidates")
    print("{:<12}{:>16}{:>16}{:>16}{:>12}".format(*head))
    for mode, t in doc["timing"].items():
        cells = [
            f"{q['p50']:>8.0f} / {q['p95']:<5.0f}" if q["count"] else f"{'-':>8}   {'':<5}"
            for q in (t["cold"], t["warm"], t["warm_cpu"])
        ]
        print(f"{mode:<12}{''.join(cells)}{t['candidates']:>10.1f}")
    if "after_add" in doc:
        a = doc["after_add"]
        print("\nright after an add, first searches: compare=verify", end=" ")
        print(
            f"{a['verify_first']['p50']:.0f} / {a['verify_first']['p95']:.0f}, embedding only",
            end=" ",
        )
        print(
            f"{a['embedding']['p50']:.0f} / {a['embedding']['p95']:.0f} ms;",
            f"precompute {a['precompute']}",
        )
    print("\nwhere compare=sift's time goes, median ms per query (one thread, warm cache)\n")
    for name, ms in doc["sift_stages"].items():
        print(f"  {name:<42}{ms:>8.1f}")
    print(f"real searches whose hits match the derived ones: {doc['agree']}/{doc['agree_total']}")


def goals(doc: dict[str, Any]) -> list[str]:
    """One line per goal (and per fused mode), saying met or MISSED."""
    lines = []
    if "recall" in doc:
        recall, base = doc["recall"], doc["recall"]["embedding"]
        for mode in FUSED:
            worse = [t for t in base if recall[mode][t]["r1"] < base[t]["r1"] - 1e-9]
            overall = recall[mode]["overall"]["r1"]
            ok = not worse and overall >= GOAL_FUSED_R1
            lines.append(
                f"{mode}: recall@1 >= embedding on every transform "
                f"{'yes' if not worse else 'NO: ' + ', '.join(worse)}; overall {overall:.3f} "
                f">= {GOAL_FUSED_R1} -> {'met' if ok else 'MISSED'}"
            )
        lost = {m: misses(doc["ranks"], m) for m in doc["ranks"]}
        lines += [f"  {m} loses vs embedding: {', '.join(x)}" for m, x in lost.items() if x]
        same = doc["ranks"]["seed-style"] == doc["ranks"]["embedding"]
        lines.append(f"seed-style (rerank off) ranks identical to embedding only: {same}")
    if "timing" in doc:
        t = doc["timing"]
        for mode in [m for m in ("sift", "verify") if m in t]:
            added = t[mode]["warm"]["p50"] - t["embedding"]["warm"]["p50"]
            ok = added <= GOAL_SIFT_ADDED_MS
            lines.append(
                f"compare={mode} adds {added:.0f} ms p50 (warm) <= {GOAL_SIFT_ADDED_MS:g} -> "
                f"{'met' if ok else 'MISSED'}"
            )
    if "after_add" in doc:
        a = doc["after_add"]
        added = a["verify_first"]["p50"] - a["embedding"]["p50"]
        ok = added <= GOAL_AFTER_ADD_MS
        lines.append(
            f"compare=verify right after an add adds {added:.0f} ms p50 <= "
            f"{GOAL_AFTER_ADD_MS:g} -> {'met' if ok else 'MISSED'}"
        )
    return lines


def misses(ranks: dict[str, dict[str, int]], mode: str) -> list[str]:
    """Queries the mode gets wrong at rank 1 that embedding alone gets right."""
    base = ranks["embedding"]
    return [f"{q} (rank {r or '>10'})" for q, r in ranks[mode].items() if r != 1 and base[q] == 1]


# -- main ------------------------------------------------------------------------------------


def load_originals(quick: bool) -> tuple[dict[str, np.ndarray], list[str]]:
    chosen = {n: ORIGINALS[n] for n in QUICK_ORIGINALS} if quick else ORIGINALS
    found, missing = {}, []
    for name, source in chosen.items():
        rgb = load_photo(name, source)
        if rgb is None:
            missing.append(name)
        else:
            found[_stem(name)] = rgb
    return found, missing


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="3 originals, 5 transforms, small gallery")
    add("--part", choices=("all", "recall", "timing"), default="all", help="what to measure")
    add("--timed", type=int, default=13, help="queries per mode in the latency pass (13)")
    add("--workers", type=int, default=2, help="comparator threads (default 2)")
    add("--seed", type=int, default=0)
    add("--modes", nargs="*", choices=TIMED, help="modes in the latency pass (default all)")
    add("--precompute", default="auto", help="auto, on, off: background verify features")
    add("--precision", default="auto", help="auto, fp32, bf16, fp16 (default auto)")
    add("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


def measure(
    args: argparse.Namespace, originals: dict[str, np.ndarray], queries: list[Query]
) -> dict[str, Any]:
    """Index the gallery in a fresh data dir, then run the passes `--part` asks for."""
    doc: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="imgsearch-copydetect-"))
    try:
        gallery = workdir / "gallery"
        gallery.mkdir()
        doc["gallery"] = build_gallery(gallery, originals, args.quick, args.seed)
        config = Config(
            data_dir=workdir / "data",
            model=OFFLINE_MODEL,
            workers=args.workers,
            precompute=args.precompute,
            precision=args.precision,
        )
        service = Service(config.resolved())
        try:
            progress(f"indexing {doc['gallery']} gallery images")
            service.ingester.add(gallery.resolve())
            ids = [int(i) for i in service.catalog.store.ids()]
            names = {i: Path(at.path).stem for i, at in service.catalog.store.paths(ids).items()}
            bench = Bench(service, names)
            if args.part in ("all", "recall"):
                ranks, embedding_ms = run_recall(bench, queries)
                doc["recall"] = summarise(ranks, queries)
                doc["embedding_all_queries_ms"] = percentiles(embedding_ms, (50, 95))
                keys = [f"{q.original}/{q.transform}" for q in queries]
                doc["ranks"] = {m: dict(zip(keys, r, strict=True)) for m, r in ranks.items()}
            if args.part in ("all", "timing"):
                timed = timing_queries(queries, 3 if args.quick else args.timed)
                doc["timed_queries"] = len(timed)
                load = os.getloadavg()[0]
                modes = args.modes or TIMED
                doc["timing"], doc["agree"], doc["agree_total"] = run_timing(bench, timed, modes)
                doc["load_average"] = [args.load, load, os.getloadavg()[0]]
                doc["sift_stages"] = sift_stages(bench, timed, modes) if "sift" in modes else {}
                doc["after_add"] = run_after_add(bench, timed, gallery)
        finally:
            service.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.load = os.getloadavg()[0]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    originals, missing = load_originals(args.quick)
    if missing:
        progress(f"skipping {len(missing)} originals not installed (opencv-doc?): {missing}")
    transforms = list(QUICK_TRANSFORMS if args.quick else TRANSFORMS)
    queries = make_queries(originals, transforms, args.seed)
    doc: dict[str, Any] = {
        "model": OFFLINE_MODEL,
        "originals": list(originals),
        "missing": missing,
        "transforms": transforms,
        "queries": len(queries),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "workers": args.workers,
    }
    doc.update(measure(args, originals, queries))
    doc["goals"] = goals(doc)
    doc["seconds"] = time.perf_counter() - start
    print(
        f"\nCopy detection: {len(queries)} queries ({len(originals)} originals x "
        f"{len(transforms)} transforms), gallery of {doc['gallery']} images, model {OFFLINE_MODEL}"
    )
    print(f"CPU: {doc['cpu_model']}, {doc['cpus']} cores; precompute {args.precompute}")
    if "recall" in doc:
        print_recall(doc)
    if "timing" in doc:
        print_timing(doc)
    print("\nGoals")
    for line in doc["goals"]:
        print("  " + line)
    print(f"\n({doc['seconds']:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
