"""open_clip weights from a file, loaded without drawing random ones first (weights.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imgsearch.catalog import INDEX_DIR, Catalog, bound_model
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.embedders.clip import ClipEmbedder, _create_loaded
from imgsearch.embedders.identity import checkpoint_digest, default_digest_cache, model_name_of
from imgsearch.embedders.weights import SkipRandomInit, unloaded
from imgsearch.errors import ConfigError
from imgsearch.service import Service

from .helpers import PHOTOS, TINY_MODEL, photo


@pytest.fixture(scope="module")
def tiny_state(tiny_embedder: Embedder) -> dict[str, torch.Tensor]:
    """The tiny random model's weights, as a checkpoint holds them."""
    assert isinstance(tiny_embedder, ClipEmbedder)
    return {
        k: v.detach().clone().contiguous() for k, v in tiny_embedder._model.state_dict().items()
    }


def _from_checkpoint(path: Path, tiny_model_config: Path) -> ClipEmbedder:
    return ClipEmbedder(
        TINY_MODEL, pretrained=None, checkpoint=path, model_config=tiny_model_config, device="cpu"
    )


def _content_id(path: Path) -> str:
    return f"open_clip/{TINY_MODEL}/sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def _saved(state: dict[str, torch.Tensor], path: Path, seed: int | None = None) -> Path:
    """`state` (or, with a seed, other weights of its shapes) saved as a checkpoint."""
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        state = {k: torch.randn(v.shape, generator=generator) for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_checkpoint_loads_without_random_init_and_embeds_identically(
    tmp_path: Path,
    kind: str,
    tiny_embedder: Embedder,
    tiny_state: dict[str, torch.Tensor],
    tiny_model_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    suffix = ".safetensors" if kind == "safetensors" else ".pt"
    path = tmp_path / f"weights{suffix}"
    if kind == "safetensors":
        save_file(tiny_state, path)
    else:  # torch's legacy format cannot be memory-mapped: it is read instead
        torch.save(tiny_state, path, _use_new_zipfile_serialization=kind == "zip")
    # The fast path itself loads it (no silent fall-back to the plain path) ...
    with caplog.at_level(logging.INFO, logger="imgsearch.embedders.clip"):
        created = _create_loaded(TINY_MODEL, str(path), "cpu")
    assert created is not None and unloaded(created[0]) == []
    assert ("cannot be memory-mapped" in caplog.text) == (kind == "legacy")
    # ... and the embedder built on it embeds images and texts as the original weights do.
    loaded = _from_checkpoint(path, tiny_model_config)
    assert loaded.model_id == _content_id(path)
    pictures = [photo(name) for name in PHOTOS[:3]]
    assert np.array_equal(loaded.embed_images(pictures), tiny_embedder.embed_images(pictures))
    assert isinstance(tiny_embedder, ClipEmbedder)
    texts = ["a cat", "the sea at night"]
    assert np.array_equal(loaded.embed_texts(texts), tiny_embedder.embed_texts(texts))


def test_checkpoint_missing_a_tensor_is_a_clear_error(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor], tiny_model_config: Path
) -> None:
    path = tmp_path / "partial.pt"
    partial = dict(tiny_state)
    del partial["visual.proj"]
    torch.save(partial, path)
    with pytest.raises(RuntimeError, match=r"visual\.proj"):
        _create_loaded(TINY_MODEL, str(path), "cpu")
    with pytest.raises(ConfigError, match=r"visual\.proj"):
        _from_checkpoint(path, tiny_model_config)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("text", "Unsupported operand"),
        ("random", ""),
        ("truncated", "PytorchStreamReader failed reading zip archive"),
        ("empty", "EOFError"),
        ("safetensors", "header too small"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_clear_line(
    tmp_path: Path,
    tiny_state: dict[str, torch.Tensor],
    tiny_model_config: Path,
    kind: str,
    cause: str,
) -> None:
    """A --checkpoint that torch cannot read: one line that says so and why (the first line
    of the cause, or its type), not torch's advice to load it with weights_only=False (which
    runs the file's code) nor the advice to pass the --checkpoint that was passed."""
    path = tmp_path / ("notes.safetensors" if kind == "safetensors" else f"{kind}.pt")
    whole = _saved(tiny_state, tmp_path / "whole.pt").read_bytes()
    contents = {"text": b"not a checkpoint", "empty": b"", "safetensors": b"hello"}
    contents["random"] = np.random.default_rng(0).bytes(5000)
    contents["truncated"] = whole[: len(whole) // 2]
    path.write_bytes(contents[kind])
    with pytest.raises(ConfigError) as caught:
        _from_checkpoint(path, tiny_model_config)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--checkpoint {path} is not an open_clip checkpoint (corrupt, ")
    assert cause in message and not message.endswith(": ")
    assert "weights_only" not in message and "pass a local weights file" not in message


def test_checkpoints_are_named_by_their_content(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor], tiny_model_config: Path
) -> None:
    """Every Hugging Face open_clip repo names its weights open_clip_pytorch_model.bin: two
    releases under that name are two models, one release renamed is the same model."""
    name = "open_clip_pytorch_model.bin"
    first = _from_checkpoint(_saved(tiny_state, tmp_path / "a" / name), tiny_model_config)
    other = _from_checkpoint(_saved(tiny_state, tmp_path / "b" / name, 1), tiny_model_config)
    assert first.model_id == _content_id(tmp_path / "a" / name) != other.model_id
    renamed = (tmp_path / "a" / name).rename(tmp_path / "ViT-tiny-laion.pt")
    assert _from_checkpoint(renamed, tiny_model_config).model_id == first.model_id
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    Catalog(data_dir, first.model_id, first.dim).close()
    with pytest.raises(ConfigError, match="holds vectors of model"):
        Catalog(data_dir, other.model_id, other.dim, aliases=other.model_aliases)
    Catalog(data_dir, first.model_id, first.dim).close()  # renamed: the same vectors


def test_a_data_dir_bound_to_the_checkpoints_file_name_is_rebound_once(
    tmp_path: Path,
    config: Config,
    tiny_state: dict[str, torch.Tensor],
    tiny_model_config: Path,
    photos: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upgrade: a data dir bound to `open_clip/MODEL/FILE NAME` by an earlier version, with
    its saved index, opens with a checkpoint of that name, rebound to the content id; the
    index is loaded, not trained again. Another file name stays refused."""
    path = _saved(tiny_state, tmp_path / "weights" / "open_clip_pytorch_model.bin")
    embedder = _from_checkpoint(path, tiny_model_config)
    earlier = f"open_clip/{TINY_MODEL}/open_clip_pytorch_model.bin"
    assert embedder.model_aliases == (earlier,)
    config = dataclasses.replace(config, checkpoint=path)
    as_before = _from_checkpoint(path, tiny_model_config)
    as_before.model_id, as_before.model_aliases = earlier, ()  # the earlier version's naming
    old = Service(config, embedder=as_before)
    try:
        assert old.ingester.add(next(iter(photos.values())).parent).added == len(photos)
        old.catalog.index.rebase()
    finally:
        old.close()
    assert bound_model(config.data_dir) == (earlier, embedder.dim)
    with caplog.at_level(logging.INFO, logger="imgsearch.catalog"):
        service = Service(config, embedder=embedder)
    try:
        assert bound_model(config.data_dir) == (embedder.model_id, embedder.dim)
        assert service.catalog.index_origin == "loaded" and len(service.catalog.index) == 5
        assert "now bound as" in caplog.text and "1 saved index base(s) renamed" in caplog.text
    finally:
        service.close()
    metas = list((config.data_dir / INDEX_DIR).glob("*/meta.json"))
    assert metas and all(json.loads(m.read_text())["model_id"] == embedder.model_id for m in metas)
    other = tmp_path / "other"
    other.mkdir()
    Catalog(other, f"open_clip/{TINY_MODEL}/ViT-tiny.bin", embedder.dim).close()
    with pytest.raises(ConfigError, match=r"holds vectors of model .*/ViT-tiny\.bin"):
        Catalog(other, embedder.model_id, embedder.dim, aliases=embedder.model_aliases)


def test_tags_are_named_as_open_clip_spells_them(tmp_path: Path) -> None:
    """open_clip matches tags case- and dash-insensitively: one spelling is one model; a
    data dir bound to another spelling by an earlier version is rebound, and one bound to
    the canonical spelling opens as it is."""
    canonical = model_name_of("ViT-B-32", "laion2b_s34b_b79k", None)
    shouted = model_name_of("ViT-B-32", "LAION2B-S34B-B79K", None)
    assert canonical.id == shouted.id == "open_clip/ViT-B-32/laion2b_s34b_b79k"
    assert canonical.aliases == () and shouted.aliases == ("open_clip/ViT-B-32/LAION2B-S34B-B79K",)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    Catalog(tmp_path / "old", shouted.aliases[0], 512).close()
    Catalog(tmp_path / "old", shouted.id, 512, aliases=shouted.aliases).close()
    assert bound_model(tmp_path / "old") == (canonical.id, 512)
    Catalog(tmp_path / "new", canonical.id, 512).close()
    Catalog(tmp_path / "new", shouted.id, 512, aliases=shouted.aliases).close()
    assert bound_model(tmp_path / "new") == (canonical.id, 512)
    assert model_name_of("ViT-B-32", None, None).id == "open_clip/ViT-B-32/random"


def test_a_checkpoint_is_hashed_again_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest of a 600 MB file is cached by (resolved path, size, mtime_ns): a restart
    reads none of it. The cache file is in $XDG_CACHE_HOME; a broken one costs a hashing."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache" / "digests.json"
    first = checkpoint_digest(path, cache)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size; the same mtime put back: the cache answers
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint_digest(tmp_path / "." / "weights.bin", cache) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = hashlib.sha256(b"b" * 1000).hexdigest()
    assert checkpoint_digest(path, cache) == changed
    assert list(json.loads(cache.read_text())) == [str(path.resolve())]
    cache.write_text("{not json")
    assert checkpoint_digest(path, cache) == changed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_digest_cache().is_relative_to(tmp_path / "xdg")


class _Masked(torch.nn.Module):
    """A layer with a computed (unsaved) buffer beside its random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)
        self.embedding = torch.nn.Parameter(torch.empty(3, 8))
        torch.nn.init.trunc_normal_(self.embedding, std=0.02)
        mask = torch.full((4, 4), float("-inf")).triu_(1)
        self.register_buffer("mask", mask, persistent=False)


def test_skipped_fills_are_nan_until_loaded_and_computed_buffers_are_kept() -> None:
    with SkipRandomInit():
        module = _Masked()
    assert sorted(unloaded(module)) == ["embedding", "linear.bias", "linear.weight"]
    expected = torch.full((4, 4), float("-inf")).triu_(1)
    assert torch.equal(module.mask, expected)
    reference = _Masked()
    assert unloaded(reference) == []
    module.load_state_dict(reference.state_dict())
    assert unloaded(module) == []
    assert torch.equal(module.linear.weight, reference.linear.weight)


def test_skipping_random_init_is_this_threads_only() -> None:
    built: list[torch.nn.Module] = []
    with SkipRandomInit():
        other = threading.Thread(target=lambda: built.append(torch.nn.Linear(16, 16)))
        other.start()
        other.join()
        here = torch.nn.Linear(16, 16)
    assert unloaded(built[0]) == []
    assert unloaded(here) == ["weight", "bias"]
    with SkipRandomInit():  # integer tensors have no NaN: they are drawn as before
        ints = torch.zeros(1000, dtype=torch.int64).random_(0, 1000)
    assert len(ints.unique()) > 100
    after = torch.nn.Linear(16, 16)  # the context is over: random again
    assert unloaded(after) == [] and float(after.weight.detach().std()) > 0


def test_a_tags_weights_from_the_hugging_face_cache_load_the_same_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_embedder: Embedder,
    tiny_state: dict[str, torch.Tensor],
    tiny_model_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--pretrained TAG`: open_clip finds the tag's file in the (offline) Hugging Face cache
    and merges the tag's preprocessing; both survive the load without random init."""
    import huggingface_hub.constants
    from open_clip import pretrained

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--imgsearch-test--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.save(tiny_state, repo / "snapshots" / commit / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    tag = {"hf_hub": "imgsearch-test/tiny-clip/", "mean": mean, "std": std}
    monkeypatch.setitem(pretrained._PRETRAINED, TINY_MODEL, {"tinytag": tag})
    with caplog.at_level(logging.INFO):
        loaded = ClipEmbedder(
            TINY_MODEL,
            pretrained="tinytag",
            checkpoint=None,
            model_config=tiny_model_config,
            device="cpu",
        )
    assert "loading it plainly" not in caplog.text and "cannot be memory-mapped" not in caplog.text
    assert loaded.model_id == f"open_clip/{TINY_MODEL}/tinytag"
    assert (loaded.preprocess.mean, loaded.preprocess.std) == (mean, std)
    assert isinstance(tiny_embedder, ClipEmbedder)
    texts = ["a lighthouse"]
    assert np.array_equal(loaded.embed_texts(texts), tiny_embedder.embed_texts(texts))
    state = loaded._model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny_state.items())


def test_a_restarted_daemon_still_knows_the_earlier_ids_of_its_weights(
    tmp_path: Path,
    config: Config,
    tiny_state: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A data dir bound already is opened before the model loads, without the ids earlier
    versions gave its weights: after a restart, `earlier_model` imports were refused."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _saved(tiny_state, tmp_path / "weights" / "open_clip_pytorch_model.bin")
    config = dataclasses.replace(config, checkpoint=path)
    earlier = f"open_clip/{TINY_MODEL}/open_clip_pytorch_model.bin"
    for start in ("new data dir", "restart"):
        service = Service(config)
        try:
            served = service.imports.served
            assert (served.model_id, served.aliases) == (_content_id(path), (earlier,)), start
        finally:
            service.close()
