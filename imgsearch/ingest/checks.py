"""Embedded rows checked before they are written (a bulk import checks its next batch while it
writes this one): an absolute path or an http(s) URL, and a finite, non-zero vector of the
catalog's size, scaled to unit length (what the index's inner product expects). Checked as
columns and one matrix: no object a row (store/rows.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..index import Precoded
from ..security import OUTSIDE
from ..store import NewImage, Rows
from ..store.rows import row_norms
from .report import FileError

URL_OR_PATH = ("/", "http://", "https://")


@dataclass(frozen=True)
class Checked:
    """Embedded rows checked ahead of writing: the good ones scaled to unit length, the
    errors that refused the others (in order), and, where the index holds codes, what it
    encoded of the good ones' vectors, in order (`ahead`)."""

    rows: Rows
    errors: list[FileError]
    ahead: Precoded | None = None

    @property
    def good(self) -> int:
        return len(self.rows)


def check_rows(rows: Rows, dim: int) -> Checked:
    """`rows` checked: the good ones (a copy of their vectors, scaled) and the others' errors."""
    n = len(rows)
    fits = rows.vectors.ndim == 2 and rows.vectors.shape[1] == dim
    matrix = np.array(rows.vectors, dtype=np.float32) if fits else np.zeros((n, dim), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = row_norms(matrix)  # NaN or inf anywhere in a row makes its norm so
    usable = np.isfinite(norms) & (norms > 0) & fits
    matrix /= np.where(usable, norms, 1.0)[:, None]
    placed = np.fromiter((p.startswith(URL_OR_PATH) for p in rows.paths), bool, count=n)
    errors: list[FileError] = []
    if not (usable & placed).all():
        got = rows.vectors.shape[1] if rows.vectors.ndim == 2 else 0
        for i in np.flatnonzero(~(usable & placed)).tolist():
            path = rows.paths[i]
            if not placed[i]:
                errors.append(FileError(path, "not an absolute path or an http(s) URL", 400))
            else:
                errors.append(FileError(path, f"not a usable {dim}-d vector (got {got} values)"))
    good = np.flatnonzero(usable & placed)
    scaled = replace(rows, vectors=matrix)
    return Checked(scaled if len(good) == n else scaled.take(good), errors)


def check_items(items: Sequence[NewImage], dim: int) -> Checked:
    """Rows given one object each, vectors of any length: those of another length refused
    first, the others checked as columns (check_rows)."""
    sizes = [int(np.size(item.vector)) for item in items]
    errors = [
        FileError(item.facts.path, f"not a usable {dim}-d vector (got {size} values)")
        for item, size in zip(items, sizes, strict=True)
        if size != dim
    ]
    fits = [item for item, size in zip(items, sizes, strict=True) if size == dim]
    checked = check_rows(Rows.of(fits), dim)
    return Checked(checked.rows, errors + checked.errors)


def refuse_outside(checked: Checked, allows: Callable[[str], bool]) -> Checked:
    """`checked` less its file rows that `allows` (a path as text) refuses, each a 403 error;
    URL rows pass (nothing is read from them but the daemon's own download)."""
    paths = checked.rows.paths
    refused = [i for i, p in enumerate(paths) if p[:1] == "/" and not allows(p)]
    if not refused:
        return checked
    errors = [FileError(paths[i], OUTSIDE, 403) for i in refused]
    kept = np.setdiff1d(np.arange(len(paths)), refused)
    return Checked(checked.rows.take(kept), checked.errors + errors, None)
