"""What an open_clip model is called in a data dir: its architecture, and its weights by
content (a checkpoint's SHA-256) or by open_clip's canonical tag, never by a file's name.

Every Hugging Face open_clip repository ships its weights as `open_clip_pytorch_model.bin`,
so a name-based id let two unrelated checkpoints share one data dir (their vectors mixed) and
refused the same weights renamed. Hashing a 638 MB checkpoint takes 0.41-0.42 s on a 2-core
AMD EPYC (Zen 4), from disk or the page cache (bench/checkpoint_digest.py), so a digest is
cached by (resolved path, size, mtime_ns) and a restart only stats the file (0.04 ms).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIGEST_CHARS = 16  # hex digits of the SHA-256 in a model id (64 bits)
CACHE_FILE = "checkpoint-digests.json"


@dataclass(frozen=True)
class ModelName:
    """A model's id, and the ids earlier versions gave the same weights (a data dir bound to
    one of those is rebound to `id`: store/meta.py)."""

    id: str
    aliases: tuple[str, ...] = ()


def model_name_of(
    model: str,
    pretrained: str | None,
    checkpoint: Path | None,
    digest_cache: Path | None = None,
) -> ModelName:
    """The id of open_clip `model` with these weights (a checkpoint wins over a tag, as in
    the loader); `digest_cache`: where checkpoint digests are kept (None: hashed every time).
    The aliases are the ids earlier versions gave: the checkpoint's file name, the tag or the
    --pretrained file as spelled."""
    if checkpoint is not None:
        return _by_content(model, checkpoint, checkpoint.name, digest_cache)
    if pretrained is None:
        return ModelName(f"open_clip/{model}/random")
    if _is_tag(model, pretrained):
        tag = clean_tag(pretrained)
        earlier = (f"open_clip/{model}/{pretrained}",) if tag != pretrained else ()
        return ModelName(f"open_clip/{model}/{tag}", earlier)
    if Path(pretrained).is_file():  # open_clip loads a --pretrained that names a file
        return _by_content(model, Path(pretrained), pretrained, digest_cache)
    return ModelName(f"open_clip/{model}/{pretrained}")  # (an hf-hub or unknown name)


def tag_spelled(model_id: str) -> str:
    """`model_id` with its open_clip tag as open_clip spells it (an earlier version kept the
    user's spelling: `open_clip/ViT-B-32/LAION2B-S34B-B79K`); other ids as they are."""
    kind, model, weights = (model_id.split("/", 2) + ["", ""])[:3]
    if kind != "open_clip" or not weights or "/" in weights or ":" in weights:
        return model_id
    return f"{kind}/{model}/{clean_tag(weights)}"


def named_by_content(model_id: str) -> bool:
    """Whether `model_id` names its weights by their digest: then the ids earlier versions
    gave them name a file, which any other checkpoint of that name had too."""
    return "/sha256:" in model_id


def _by_content(model: str, weights: Path, earlier: str, cache: Path | None) -> ModelName:
    digest = checkpoint_digest(weights, cache)[:DIGEST_CHARS]
    return ModelName(f"open_clip/{model}/sha256:{digest}", (f"open_clip/{model}/{earlier}",))


def clean_tag(tag: str) -> str:
    """open_clip's own spelling of a pretrained tag (pretrained._clean_tag: it matches tags
    case- and dash-insensitively, so `LAION2B-S34B-B79K` loads `laion2b_s34b_b79k`)."""
    return tag.lower().replace("-", "_")


def _is_tag(model: str, pretrained: str) -> bool:
    """Whether open_clip knows `pretrained` as a tag of `model` (else it may be a file)."""
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model, pretrained))


def default_digest_cache() -> Path:
    """Where digests are kept: the user's cache dir ($XDG_CACHE_HOME, where the Hugging Face
    weights are too; the Docker image points it into the /data volume). Not the data dir:
    a cluster worker loads the model without one, and one checkpoint serves many data dirs."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "imgsearch" / CACHE_FILE


def checkpoint_digest(path: Path, cache: Path | None = None) -> str:
    """The SHA-256 (hex) of a file's bytes, from `cache` while the file's resolved path, size
    and mtime_ns are those it was hashed at. The cache is a convenience: one that cannot be
    read or written only costs a hashing."""
    resolved = path.resolve()
    stat = resolved.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    known = _read_cache(cache) if cache is not None else {}
    entry = known.get(str(resolved))
    if isinstance(entry, dict) and {k: entry.get(k) for k in key} == key:
        digest = entry.get("sha256")
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    started = time.monotonic()
    with open(resolved, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    took = time.monotonic() - started
    log.info("hashed %s (%d MB) in %.1fs to name its weights", resolved, stat.st_size >> 20, took)
    if cache is not None:
        _write_cache(cache, {**_fresh(known), str(resolved): {**key, "sha256": digest}})
    return digest


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        raw = json.loads(cache.read_text())
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("checkpoint digest cache %s unreadable: %s", cache, exc)
        return {}
    return raw if isinstance(raw, dict) else {}


def _fresh(known: Mapping[str, Any]) -> dict[str, Any]:
    """The entries whose file is still there as it was hashed (the cache never grows stale)."""
    out = {}
    for name, entry in known.items():
        try:
            stat = Path(name).stat()
        except OSError:
            continue
        if isinstance(entry, dict) and entry.get("size") == stat.st_size:
            if entry.get("mtime_ns") == stat.st_mtime_ns:
                out[name] = entry
    return out


def _write_cache(cache: Path, entries: Mapping[str, Any]) -> None:
    """Replace the cache file in one rename (two daemons starting at once: one's entry wins)."""
    tmp: str | None = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=cache.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(entries, fh, indent=1)
        os.replace(tmp, cache)
    except OSError as exc:
        log.debug("checkpoint digest cache %s not written: %s", cache, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
