"""open_clip weights from a file, loaded without drawing random ones first (weights.py)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imgsearch.embedders import Embedder
from imgsearch.embedders.clip import ClipEmbedder, _create_loaded
from imgsearch.embedders.weights import SkipRandomInit, unloaded
from imgsearch.errors import ConfigError

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
    assert loaded.model_id == f"open_clip/{TINY_MODEL}/weights{suffix}"
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


def test_a_file_that_is_no_checkpoint_is_a_clear_error(
    tmp_path: Path, tiny_model_config: Path
) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load open_clip"):
        _from_checkpoint(path, tiny_model_config)


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
