"""The duplicates report: clusters of images that are one picture, and how they were found
(what `duplicates.DuplicateFinder.find` returns, and its JSON for GET /duplicates)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Member:
    """One image of a cluster. In a near cluster: its embedding distance to the cluster's first
    image, and (but for the first) the earlier image it was confirmed against, with verify's
    verdict on that pair; `copies` counts other files with the same bytes."""

    image: str
    source: str | None = None
    distance: float | None = None
    match: int | None = None
    verdict: str | None = None
    copies: int = 0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image}
        if self.source is not None:
            out["source"] = self.source
        if self.distance is not None:
            out["distance"] = round(self.distance, 6)
        if self.match is not None:
            out["match"] = self.match
        if self.verdict is not None:
            out["verdict"] = self.verdict
        if self.copies:
            out["copies"] = self.copies
        return out


@dataclass(frozen=True)
class Cluster:
    """Images that are one picture: `identical` (same bytes) or `near` (confirmed copies)."""

    kind: str
    images: tuple[Member, ...]

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "images": [m.as_json() for m in self.images]}


@dataclass(frozen=True)
class Report:
    """Clusters, identical ones first, each kind largest first, and how they were found."""

    clusters: tuple[Cluster, ...]
    images: int  # present images looked at
    threshold: float
    verified: bool  # near pairs were confirmed by geometric verification
    method: str  # candidate pass: "exact" or "ivf"
    pairs: int  # candidate pairs within the threshold
    checked: int  # pairs verification looked at
    unreadable: int  # images left out of near clusters: their file could not be read
    seconds: float
    folder: str | None = None
    cached: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clusters": [c.as_json() for c in self.clusters]}
        out.update(
            images=self.images,
            threshold=self.threshold,
            verified=self.verified,
            method=self.method,
            pairs=self.pairs,
            checked=self.checked,
            unreadable=self.unreadable,
            seconds=round(self.seconds, 3),
            cached=self.cached,
        )
        if self.folder is not None:
            out["folder"] = self.folder
        return out
