"""An import job's record (what it is made of and how far it got, saved after every batch in
DATA_DIR/imports/ID.json) and the path prefixes it rewrites (`path_map`)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest
from ..ingest.checks import URL_OR_PATH

URL_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.")  # a scheme (RFC 3986), then something


class PathMap:
    """Rewrites path prefixes (OLD=NEW pairs, first match wins, at a folder boundary)."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        """A path side is taken as a row's path is (`local_path`): `/mnt/./a/` is `/mnt/a`."""
        self.pairs = [(local_path(old).rstrip("/"), new.rstrip("/")) for old, new in pairs]

    @classmethod
    def parse(cls, specs: Sequence[str]) -> PathMap:
        """OLD=NEW pairs; 400 for one that is not, before any row is read. NEW must be an
        absolute path or an http(s) URL prefix, as a row's path is (a relative NEW made every
        mapped row fail); OLD that too, or any URL prefix (`s3://bucket/photos`: the rows of
        `imgsearch embed s3://...`, which the import takes only mapped to a path). A relative
        OLD matched no row. Each row's path is checked after it is mapped (format.check_batch)."""
        pairs = []
        for spec in specs:
            old, sep, new = str(spec).partition("=")
            if not sep or not old or not new:
                raise BadRequest(f"path map must be OLD=NEW, got {spec!r}")
            if not (old.startswith(URL_OR_PATH) or URL_PREFIX.match(old)):
                raise BadRequest(
                    f"path map {spec!r}: OLD must be an absolute path or an http(s) URL, "
                    "or another URL prefix (s3://bucket/photos)"
                )
            if not new.startswith(URL_OR_PATH):
                raise BadRequest(
                    f"path map {spec!r}: NEW must be an absolute path or an http(s) URL"
                )
            pairs.append((old, new))
        return cls(pairs)

    def __call__(self, path: str) -> str:
        for old, new in self.pairs:
            if path == old or path.startswith(old + "/"):
                return new + path[len(old) :]
        return path

    def specs(self) -> list[str]:
        return [f"{old}={new}" for old, new in self.pairs]


@dataclass
class ImportJob:
    """One import of a folder of shards, and how far it got."""

    id: str
    dir: str
    path_map: list[str]
    total: int
    state: str = "queued"
    shards: dict[str, int] = field(default_factory=dict)  # shard name -> rows done
    shard_rows: dict[str, int] = field(default_factory=dict)  # shard name -> its rows (kept)
    imported: int = 0
    skipped: int = 0  # stored already with the same size and mtime
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    earlier_model: bool = False  # shards named by an earlier id of a checkpoint's file taken
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)
    cancelled: bool = field(default=False, repr=False)  # stopped by a user, not a shutdown
    _clock: float = field(default=0.0, repr=False)  # when this process started running it
    _done_here: int = field(default=0, repr=False)

    @property
    def done(self) -> int:
        return sum(self.shards.values())

    def as_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self._clock if self._clock else 0.0
        rate = self._done_here / elapsed if elapsed > 0 and self._done_here else None
        eta = None
        if rate and self.state == "running":
            eta = round((self.total - self.done) / rate, 1)
        shown = {k: v for k, v in self.record().items() if k != "shard_rows"}
        return {
            **shown,
            "done": self.done,
            "vectors_per_s": round(rate, 1) if rate else None,
            "eta_s": eta,
        }

    def record(self) -> dict[str, Any]:
        """What is persisted (and shown): everything but the rates."""
        return {
            "id": self.id,
            "kind": "import",
            "dir": self.dir,
            "path_map": self.path_map,
            "state": self.state,
            "total": self.total,
            "imported": self.imported,
            "skipped": self.skipped,
            "failed": self.failed,
            "errors": self.errors,
            "shards": self.shards,
            "shard_rows": self.shard_rows,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "earlier_model": self.earlier_model,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ImportJob:
        keys = ("id", "dir", "path_map", "total", "state", "shards", "imported", "failed")
        job = cls(**{k: data[k] for k in keys})
        job.errors, job.error = data.get("errors", []), data.get("error")
        job.skipped = data.get("skipped", 0)
        job.earlier_model = bool(data.get("earlier_model", False))
        job.shard_rows = data.get("shard_rows", {})  # (records before 2026-12-07: none)
        job.created, job.started, job.finished = data["created"], data["started"], data["finished"]
        return job


__all__ = ["ImportJob", "PathMap"]


def local_path(path: str) -> str:
    """A local path (one that starts with `/`) without `.`, `..` or repeated slashes, as the
    store keeps it; any other text as it is."""
    if not path.startswith("/"):
        return path
    return "/" + os.path.normpath(path).lstrip("/")  # (normpath keeps a leading //)
