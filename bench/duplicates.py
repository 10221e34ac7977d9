"""Duplicates: the candidate pass at 100k images (exact vs IVF), and the distances behind the
default threshold.

Scale (the default): a real Catalog (SQLite + FAISS) in a temp dir holding `--n` synthetic unit
vectors of `--dim` dimensions, spread like real image embeddings (different pictures 0.6-0.8
apart, as efficientnet-lite0 puts different photos) or, with `--spread isotropic`, uniformly
(the worst case for cells: no structure). Planted among them: `--planted` near-duplicate pairs
at distances drawn uniformly from 0.002-0.14 (under the default threshold 0.15) and
`--groups` byte-identical groups of 2-4 rows (same content hash, same vector). Measured in one
run: `DuplicateFinder.find()` end to end (without verification: the files do not exist) and
again from its cache; then the candidate pass alone (`neighbours.close_pairs`) on the same
vectors with the approximate method (IVF) and the exact one (brute-force k-NN), their time
ratio, the recall of the planted pairs by each, and peak RSS after each stage.

Distances (`--distances`): the bundled efficientnet-lite0 on real photos (scikit-image): edited
copies (re-encoded, resized, cropped, brightness, contrast, a 1/4 thumbnail), burst-like pairs
(the camera moved: two overlapping crops; the subject moved: one scene, a pasted object at two
places; a stereo pair) and different photos; with verify's verdict and its same-photo test
(what /duplicates accepts) for each pair, and the time per feature extraction and per check.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/duplicates.py [--n 100000] [--dim 512] [--json F]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/duplicates.py --spread isotropic --no-exact
    HF_HUB_OFFLINE=1 .venv/bin/python bench/duplicates.py --distances
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import progress
from PIL import Image, ImageEnhance

from imgsearch.catalog import Catalog
from imgsearch.comparators import FeatureCache, Picture
from imgsearch.duplicates import DEFAULT_THRESHOLD, DuplicateFinder
from imgsearch.neighbours import close_pairs
from imgsearch.store import FileFacts, NewImage

TOPICS = 2000  # clustered spread: vectors share a common part and one of TOPICS topic parts
BATCH = 10_000


def peak_rss_mb() -> float:
    """The process's peak RSS since start, or since the last reset_peak() (Linux)."""
    status = _status()
    if "VmHWM" in status:
        return status["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return _status().get("VmRSS", math.nan)


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status() -> dict[str, float]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        k: int(v.split()[0]) / 1024
        for k, _, v in (line.partition(":") for line in lines)
        if k in ("VmRSS", "VmHWM")
    }


# -- scale ------------------------------------------------------------------------------------


def synthetic(
    n: int, dim: int, planted: int, groups: int, spread: str, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int]], list[list[int]]]:
    """Unit vectors; planted near pairs (row, row); identical groups (rows, same vector)."""
    if spread == "isotropic":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:  # cosine ~0.3 between different pictures, ~0.6 within a topic
        common = _unit(rng.standard_normal((1, dim), dtype=np.float32))
        topics = _unit(rng.standard_normal((TOPICS, dim), dtype=np.float32))
        noise = _unit(rng.standard_normal((n, dim), dtype=np.float32))
        x = 0.3**0.5 * common + 0.3**0.5 * topics[rng.integers(0, TOPICS, n)] + 0.4**0.5 * noise
    x = _unit(x)
    rows = rng.permutation(n)
    pairs = [(int(a), int(b)) for a, b in rows[: 2 * planted].reshape(-1, 2)]
    for a, b in pairs:  # b becomes a near copy of a, at a distance from 0.002 to 0.14
        delta = rng.uniform(0.002, 0.14)
        away = rng.standard_normal(dim).astype(np.float32)
        away = _unit((away - (away @ x[a]) * x[a])[None])[0]
        x[b] = _unit((x[a] + math.sqrt(1 / (1 - delta) ** 2 - 1) * away)[None])[0]
    identical = []
    start = 2 * planted
    for _ in range(groups):
        size = int(rng.integers(2, 5))
        group = [int(r) for r in rows[start : start + size]]
        start += size
        x[group[1:]] = x[group[0]]
        identical.append(group)
    return x, pairs, identical


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def build_catalog(
    data_dir: Path, x: np.ndarray, identical: list[list[int]]
) -> tuple[Catalog, list[int]]:
    """A real catalog of the vectors (files that do not exist); store id of each row."""
    data_dir.mkdir(parents=True)
    catalog = Catalog(data_dir, "bench/synthetic", x.shape[1])
    digest = {r: hashlib.sha256(f"row {g[0]}".encode()).hexdigest() for g in identical for r in g}
    ids: list[int] = []
    with catalog.index.hold():  # as an import does: the index is trained once, at the end
        for start in range(0, len(x), BATCH):
            items = []
            for row in range(start, min(start + BATCH, len(x))):
                sha = digest.get(row) or hashlib.sha256(f"row {row}".encode()).hexdigest()
                path = f"/photos/{row // 1000:03d}/{row:06d}.jpg"
                items.append(NewImage(FileFacts(path, 3_000_000, 0, sha, 4000, 3000), x[row]))
            ids += catalog.put(items).ids
            progress(f"catalog: {len(ids)} of {len(x)} images")
    while catalog.index.maintain() is not None:  # settled before find() is timed
        progress(f"index: {catalog.index.describe()['kind']}")
    return catalog, ids


def recall(found: tuple[np.ndarray, np.ndarray], planted: list[tuple[int, int]]) -> float:
    got = set(zip(found[0].tolist(), found[1].tolist(), strict=True))
    return sum((min(a, b), max(a, b)) in got for a, b in planted) / max(1, len(planted))


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    x, planted, identical = synthetic(args.n, args.dim, args.planted, args.groups, args.spread, rng)
    doc: dict[str, Any] = {"n": args.n, "dim": args.dim, "spread": args.spread}
    doc.update(planted=len(planted), groups=len(identical), threshold=args.threshold)
    workdir = Path(tempfile.mkdtemp(prefix="imgsearch-duplicates-"))
    try:
        start = time.perf_counter()
        catalog, ids = build_catalog(workdir / "data", x, identical)
        doc["build_s"] = time.perf_counter() - start
        del x  # from here on, vectors come from the catalog
        doc["rss_before_find_mb"] = rss_mb()
        reset_peak()
        finder = DuplicateFinder(
            catalog,
            None,
            FeatureCache(workdir / "features"),
            workers=2,
            max_file_bytes=1 << 26,
            max_pixels=1 << 28,
        )
        doc["find"] = timed_find(finder, args.threshold, ids, planted)
        doc["find_peak_rss_mb"] = peak_rss_mb()
        hidden = {ids[r] for g in identical for r in g[1:]}  # as find() does: once a group
        doc.update(candidate_passes(catalog, ids, hidden, planted, args))
        catalog.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return doc


def timed_find(
    finder: DuplicateFinder, threshold: float, ids: list[int], planted: list[tuple[int, int]]
) -> dict[str, Any]:
    progress("DuplicateFinder.find() (no verification)")
    start = time.perf_counter()
    report = finder.find(threshold)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    cached = finder.find(threshold)
    cached_s = time.perf_counter() - start
    cluster_of = {}
    for number, cluster in enumerate(report.clusters):
        if cluster.kind == "near":
            for member in cluster.images:
                cluster_of[member.image] = number
    path = {i: f"/photos/{r // 1000:03d}/{r:06d}.jpg" for r, i in enumerate(ids)}
    joined = sum(
        cluster_of.get(path[ids[a]], -1) == cluster_of.get(path[ids[b]], -2) for a, b in planted
    )
    kinds = [c.kind for c in report.clusters]
    return {
        "seconds": seconds,
        "cached_seconds": cached_s,
        "cached": cached.cached,
        "method": report.method,
        "pairs": report.pairs,
        "identical_clusters": kinds.count("identical"),
        "near_clusters": kinds.count("near"),
        "planted_joined": joined / max(1, len(planted)),
    }


def candidate_passes(
    catalog: Catalog,
    ids: list[int],
    hidden: set[int],
    planted: list[tuple[int, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """close_pairs on the catalog's vectors: IVF, then exact; times, recall, agreement."""
    chunks = list(catalog.store.vectors())
    store_ids = np.concatenate([c.ids for c in chunks])
    vectors = np.concatenate([c.vectors for c in chunks])
    keep = ~np.isin(store_ids, np.fromiter(hidden, dtype=np.int64, count=len(hidden)))
    store_ids, vectors = store_ids[keep], vectors[keep]
    row_of = {store_id: row for row, store_id in enumerate(ids)}
    rows = np.asarray([row_of[int(i)] for i in store_ids], dtype=np.int64)
    out: dict[str, Any] = {}
    found = {}
    for method in ("ivf", "exact") if args.exact else ("ivf",):
        progress(f"candidate pass: {method} over {len(vectors)} x {vectors.shape[1]}")
        before = rss_mb()
        reset_peak()
        start = time.perf_counter()
        pairs = close_pairs(vectors, args.threshold, method=method)
        seconds = time.perf_counter() - start
        a, b = rows[pairs.first], rows[pairs.second]
        found[method] = (np.minimum(a, b), np.maximum(a, b))
        out[method] = {
            "seconds": seconds,
            "pairs": len(pairs),
            "recall": recall(found[method], planted),
            "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": before,
        }
    if "exact" in found:
        exact = set(zip(*(f.tolist() for f in found["exact"]), strict=True))
        ivf = set(zip(*(f.tolist() for f in found["ivf"]), strict=True))
        out["ivf_found_of_exact"] = len(exact & ivf) / max(1, len(exact))
        out["exact_over_ivf"] = out["exact"]["seconds"] / out["ivf"]["seconds"]
    return out


def print_scale(doc: dict[str, Any]) -> None:
    find = doc["find"]
    print(
        f"\nDuplicates at scale: {doc['n']} x {doc['dim']}-d vectors ({doc['spread']}), "
        f"{doc['planted']} planted pairs, {doc['groups']} identical groups, "
        f"threshold {doc['threshold']}"
    )
    vectors_mb = doc["n"] * doc["dim"] * 4 / 2**20
    print(
        f"  catalog built in {doc['build_s']:.1f} s; RSS then {doc['rss_before_find_mb']:.0f} MB"
        f" (the index alone holds {vectors_mb:.0f} MB of vectors)"
    )
    print(
        f"  find(): {find['seconds']:.1f} s ({find['method']}, {find['pairs']} pairs, "
        f"{find['identical_clusters']} identical + {find['near_clusters']} near clusters, "
        f"planted pairs joined {find['planted_joined']:.4f}); cached {find['cached_seconds']:.3f}"
        f" s; peak RSS {doc['find_peak_rss_mb']:.0f} MB "
        f"(+{doc['find_peak_rss_mb'] - doc['rss_before_find_mb']:.0f})"
    )
    for method in ("ivf", "exact"):
        if method in doc:
            m = doc[method]
            extra = m["peak_rss_mb"] - m["rss_before_mb"]
            print(
                f"  candidate pass {method:5s}: {m['seconds']:7.1f} s, {m['pairs']} pairs, "
                f"recall of planted pairs {m['recall']:.4f}, peak RSS {m['peak_rss_mb']:.0f} MB"
                f" (+{extra:.0f} over its input)"
            )
    if "exact_over_ivf" in doc:
        print(
            f"  exact / ivf time: {doc['exact_over_ivf']:.1f}x; "
            f"ivf found {doc['ivf_found_of_exact']:.4f} of the exact pairs"
        )


# -- distances ------------------------------------------------------------------------------


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = img.size
    return img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def _scaled(img: Image.Image, factor: float) -> Image.Image:
    return img.resize(
        (round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS
    )


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "re-encoded, JPEG q50": lambda im: _jpeg(im, 50),
    "resized to 1/2": lambda im: _scaled(im, 0.5),
    "cropped 5% a side": lambda im: _crop(im, (0.05, 0.05, 0.95, 0.95)),
    "cropped 10% one side": lambda im: _crop(im, (0.1, 0.0, 1.0, 1.0)),
    "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness -25%": lambda im: ImageEnhance.Brightness(im).enhance(0.75),
    "contrast +30%": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    "thumbnail 1/4, q70": lambda im: _jpeg(_scaled(im, 0.25), 70),
}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "motorcycle")
OTHERS = ("hubble_deep_field", "immunohistochemistry", "retina", "page", "brick", "moon")


def _photo(name: str) -> Image.Image:
    from skimage import data as skdata

    if name.startswith("motorcycle"):
        left, right, _ = skdata.stereo_motorcycle()
        arr = np.asarray(right if name.endswith("right") else left)
    else:
        arr = np.asarray(getattr(skdata, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return _jpeg(Image.fromarray(np.ascontiguousarray(arr[..., :3])), 92)


def _bursts(img: Image.Image, subject: Image.Image) -> dict[str, tuple[Image.Image, Image.Image]]:
    out = {}
    for shift in (0.05, 0.10, 0.15):  # the camera moved: two overlapping 85% frames
        frame = (0.0, 0.0, 0.85, 0.9)
        moved = (shift, 0.03, 0.85 + shift, 0.93)
        out[f"camera moved {shift:.0%}"] = (_crop(img, frame), _crop(img, moved))
    w, h = img.size
    for scale in (0.1, 0.2, 0.3):  # the subject moved: one scene, an object at two places
        thing = subject.resize(
            (round(w * scale), round(w * scale * subject.height / subject.width))
        )
        shots = []
        for x, y in ((0.1, 0.2), (0.5, 0.3)):
            shot = img.copy()
            shot.paste(thing, (round(x * w), round(y * h)))
            shots.append(shot)
        out[f"subject moved ({scale:.0%} wide)"] = (shots[0], shots[1])
    return out


def run_distances(args: argparse.Namespace) -> dict[str, Any]:
    from imgsearch.comparators.verify import VerifyComparator
    from imgsearch.embedders.cnn import EfficientNetLite0

    embedder = EfficientNetLite0("cpu")
    verify = VerifyComparator()
    photos = {name: _photo(name) for name in PHOTOS}
    cases: dict[str, list[dict[str, Any]]] = {}
    feature_s: list[float] = []
    check_s: list[float] = []

    def pair(kind: str, name: str, a: Image.Image, b: Image.Image) -> None:
        v = embedder.embed_images([a, b])
        start = time.perf_counter()
        fa, fb = verify.features(Picture.from_pil(a)), verify.features(Picture.from_pil(b))
        feature_s.append((time.perf_counter() - start) / 2)
        if a.width * a.height < b.width * b.height:  # the larger picture is the query
            fa, fb = fb, fa
        start = time.perf_counter()
        score, same = verify.same_photo(fa, fb)
        check_s.append(time.perf_counter() - start)
        row = {"photo": name, "distance": 1.0 - float(v[0] @ v[1])}
        row.update(verdict=score.extra["verdict"], same_photo=same)
        cases.setdefault(f"{kind}: {name}" if kind == "different" else kind, []).append(row)

    for name, img in photos.items():
        progress(f"distances: {name}")
        for edit, fn in EDITS.items():
            pair(f"edit: {edit}", name, img, fn(img))
        subject = _crop(photos["rocket" if name == "coffee" else "coffee"], (0.3, 0.2, 0.7, 0.8))
        for burst, (a, b) in _bursts(img, subject).items():
            pair(f"burst: {burst}", name, a, b)
    pair("burst: stereo pair", "motorcycle", photos["motorcycle"], _photo("motorcycle_right"))
    others = {**photos, **{name: _photo(name) for name in OTHERS}}
    vectors = embedder.embed_images(list(others.values()))
    names = list(others)
    different = sorted(
        (1.0 - float(vectors[i] @ vectors[j]), f"{names[i]}/{names[j]}")
        for i, j in itertools.combinations(range(len(others)), 2)
    )
    return {
        "cases": {k: summarise(v) for k, v in cases.items()},
        "different_photos": {
            "pairs": len(different),
            "min": different[0][0],
            "closest": different[0][1],
            "median": statistics.median(d for d, _ in different),
        },
        "verify_features_ms": 1000 * statistics.median(feature_s),
        "same_photo_ms": 1000 * statistics.median(check_s),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    distances = [r["distance"] for r in rows]
    verdicts: dict[str, int] = {}
    for r in rows:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    return {
        "pairs": len(rows),
        "min": min(distances),
        "median": statistics.median(distances),
        "max": max(distances),
        "verdicts": verdicts,
        "same_photo": sum(r["same_photo"] for r in rows),
        "within_default": sum(d <= DEFAULT_THRESHOLD for d in distances),
    }


def print_distances(doc: dict[str, Any]) -> None:
    print(f"\nefficientnet-lite0 distances (1 - cosine), {len(PHOTOS)} photos; default threshold")
    print(f"{DEFAULT_THRESHOLD}. same photo = verify's same-photo test (what /duplicates accepts)")
    print(f"{'pair':38s} {'min':>7s} {'median':>7s} {'max':>7s}  <=thr  same photo  verdicts")
    for name, c in doc["cases"].items():
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(c["verdicts"].items()))
        print(
            f"{name:38s} {c['min']:7.4f} {c['median']:7.4f} {c['max']:7.4f}  "
            f"{c['within_default']:2d}/{c['pairs']:<2d}  {c['same_photo']:2d}/{c['pairs']:<2d}     "
            f"{verdicts}"
        )
    d = doc["different_photos"]
    print(
        f"different photos ({d['pairs']} pairs): min {d['min']:.4f} ({d['closest']}), "
        f"median {d['median']:.4f}"
    )
    print(
        f"verify features {doc['verify_features_ms']:.0f} ms per image (640 px), "
        f"same-photo check {doc['same_photo_ms']:.1f} ms per pair (medians)"
    )


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--distances", action="store_true", help="measure lite0 distances on real photos instead")
    add("--n", type=int, default=100_000, help="synthetic images (100000)")
    add("--dim", type=int, default=512, help="vector dimensions (512; lite0 has 1280)")
    add("--spread", choices=("clustered", "isotropic"), default="clustered")
    add("--planted", type=int, default=2000, help="near-duplicate pairs planted (2000)")
    add("--groups", type=int, default=500, help="byte-identical groups of 2-4 (500)")
    add("--threshold", type=float, default=DEFAULT_THRESHOLD)
    add("--no-exact", dest="exact", action="store_false", help="skip the exact pass")
    add("--seed", type=int, default=0)
    add("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = os.getloadavg()
    start = time.perf_counter()
    doc = run_distances(args) if args.distances else run_scale(args)
    doc.update(cpus=os.cpu_count(), load_average=[load[0], os.getloadavg()[0]])
    doc["seconds"] = time.perf_counter() - start
    (print_distances if args.distances else print_scale)(doc)
    print(
        f"\n({doc['seconds']:.0f} s in all; 1-minute load average {load[0]:.2f} at start, "
        f"{doc['load_average'][1]:.2f} at end, {doc['cpus']} CPUs)"
    )
    if max(doc["load_average"]) > (os.cpu_count() or 1) / 2:
        print("warning: the machine was busy; wall-clock figures are inflated")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
