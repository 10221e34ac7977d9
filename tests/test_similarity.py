"""Real similarity with the bundled ImageNet model: edited copies find their originals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps
from sklearn.datasets import load_sample_images

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.search import SearchOptions
from imgsearch.service import Service

from .helpers import PHOTOS, jpeg_bytes, photo

# Slow lane: the real EfficientNet-Lite0 over a gallery (make test runs it).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for name in PHOTOS:
        photo(name, 400).save(folder / f"{name}.jpg", quality=92)
    for i, arr in enumerate(load_sample_images().images):
        Image.fromarray(arr).save(folder / f"sample{i}.jpg", quality=92)
    return folder


@pytest.fixture(scope="module")
def service(gallery: Path, lite0: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Service:
    config = Config(data_dir=tmp_path_factory.mktemp("data"), model="efficientnet-lite0")
    svc = Service(config.resolved(), embedder=lite0)
    report = svc.ingester.add(gallery)
    assert (report.added, report.failed) == (len(PHOTOS) + 2, 0)
    return svc


def _crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((w // 5, h // 6, w * 4 // 5, h * 5 // 6))


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop": _crop,
    "small": lambda im: im.resize((im.width // 4, im.height // 4)),
    "gray": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "mirror": ImageOps.mirror,
    "border": lambda im: ImageOps.expand(im, border=40, fill="white"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket", "astronaut"])
def test_edited_copy_finds_its_original_first(
    service: Service, gallery: Path, name: str, edit: str
) -> None:
    query = EDITS[edit](photo(name, 400))
    hits = service.searcher.by_bytes(jpeg_bytes(query, quality=60), SearchOptions(limit=5))
    assert hits[0].image == str(gallery / f"{name}.jpg"), [h.image for h in hits]
    assert hits[0].distance < hits[1].distance


def test_unrelated_image_is_far(service: Service) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    hits = service.searcher.by_bytes(jpeg_bytes(Image.fromarray(noise)), SearchOptions(limit=1))
    exact = service.searcher.by_bytes(jpeg_bytes(photo("chelsea", 400)), SearchOptions(limit=1))
    assert exact[0].distance < 0.05 < hits[0].distance
