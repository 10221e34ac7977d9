"""The fine codes' quantizers (fine.py): how a vector becomes a code of dim / 2 bytes, and how a
query scores codes as they are.

`Allotted` (since 2026-12-05) spends the bytes where a query's inner product varies: it turns
the vectors into their principal directions (a PCA of the training sample), gives the
directions that carry most of it 8 bits, the middle 4 bits and the last none, and chooses how
many get 8 bits (none, dim / 32 ... dim / 4, or no rotation at all) by the error it expects in
a query's score on the sample. Embeddings vary along few directions (the k-th direction's
variance falls as k^-1.2: bench/spectrum.py), and a query's score is mostly their sum there:
at 9M images (bench/fine_ab.py) the best 40 of 1,000 candidates by these codes held the true
top 10 as often as the best 100 by 4 bits on every dimension (recall@10 0.986 / 0.987), the
best 20 as often as their best 60 (0.9805 / 0.9815). Where the variance is spread evenly the
choice is 4 bits everywhere, as before.

`Nibbles` is the earlier kind, FAISS's 4-bit scalar quantizer on every dimension
(fine.faiss), kept so that bases saved with it load and search as they were.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

NIBBLES_FILE = "fine.faiss"
ALLOTTED_FILE = "fine.npz"
FILES = (ALLOTTED_FILE, NIBBLES_FILE)
# The PCA is fitted on at most this many rows of the training sample (512 x 512 covariance).
PCA_ROWS = 100_000
# Shares of the dimensions tried at 8 bits (as many of the last get none).
WIDE_SHARES = (0, 32, 16, 8, 4)
# Codes are scored this many bytes of float32 a part at a time (Allotted.scored: a part's
# copies as float32 stay in the core's cache). 2,000 candidates of a 1M 1280-d library (40
# directions at 8 bits, 1,200 at 4: copies of 2.4 KB a row) scored in 1.16-1.21 ms p50 in
# parts against 1.33-1.61 whole, caches cold; at 512-d (128 + 256 directions) this bound
# leaves 2,000 whole (bench/fine_score.py).
SCORE_PART_BYTES = 1 << 20


class Quantizer(Protocol):
    @property
    def code_size(self) -> int: ...

    def encode(self, vectors: np.ndarray) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...

    def scores(self, codes: np.ndarray, query: np.ndarray) -> np.ndarray: ...

    def weights(self, query: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def scored(self, codes: np.ndarray, weights: tuple[np.ndarray, ...]) -> np.ndarray: ...

    def describe(self) -> str: ...

    def save(self, folder: Path) -> str: ...


@dataclass(frozen=True)
class Allotted:
    """Codes of the vectors' principal directions (`rotation`: dim x kept, None: the
    dimensions as they are): the first `wide` kept directions at 8 bits, the rest at 4 (two a
    byte, low nibble first), the directions beyond `kept` dropped. A direction d's code c
    stands for lo[d] + (c + 0.5) step[d]."""

    mean: np.ndarray  # (dim,) subtracted before the rotation
    rotation: np.ndarray | None  # (dim, kept) orthonormal columns, or None
    lo: np.ndarray  # (kept,)
    step: np.ndarray  # (kept,)
    wide: int

    @property
    def code_size(self) -> int:
        return self.wide + (len(self.lo) - self.wide + 1) // 2

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes of `vectors`, made by FAISS (a linear transform, then its 8-bit and 4-bit
        scalar quantizers given these ranges): without the GIL, on FAISS's OpenMP team.
        (numpy's product went to an OpenBLAS of its own, whose threads spin between calls:
        10.7 CPU-us a row against 6.3 here, bench/fine_ab.py --encode; an import's CPU a row
        9% up at 1M, docs/BENCHMARKS.md.)"""
        turn, parts = self._coders
        x = np.ascontiguousarray(vectors, np.float32)
        if not len(x):
            return np.zeros((0, self.code_size), np.uint8)
        z = x if turn is None else turn.apply(x)
        codes, start = [], 0
        for part in parts:
            end = start + int(part.d)
            codes.append(part.sa_encode(np.ascontiguousarray(z[:, start:end])))
            start = end
        return codes[0] if len(codes) == 1 else np.hstack(codes)

    @cached_property
    def _coders(self) -> tuple[Any, list[Any]]:
        """FAISS's pieces of encode(): the rotation (None: the dimensions as they are), and a
        scalar quantizer a part (the wide directions, the rest), their ranges set from
        these (FAISS's code c of a range [vmin, vmin + vdiff] at b bits stands for
        vmin + (c + 0.5) vdiff / (2^b - 1): vdiff = step x (2^b - 1))."""
        import faiss

        dim, kept = len(self.mean), len(self.lo)
        low = self.lo + (self.mean if self.rotation is None else self.mean @ self.rotation)
        turn = None
        if self.rotation is not None:
            turn = faiss.LinearTransform(dim, kept, False)
            faiss.copy_array_to_vector(np.ascontiguousarray(self.rotation.T).ravel(), turn.A)
            turn.is_trained = True
        parts = []
        for a, b, qtype, top in (
            (0, self.wide, faiss.ScalarQuantizer.QT_8bit, 255),
            (self.wide, kept, faiss.ScalarQuantizer.QT_4bit, 15),
        ):
            if b > a:
                part = faiss.IndexScalarQuantizer(b - a, qtype, faiss.METRIC_INNER_PRODUCT)
                ranges = np.concatenate([low[a:b], self.step[a:b] * top]).astype(np.float32)
                faiss.copy_array_to_vector(ranges, part.sq.trained)
                part.is_trained = True
                parts.append(part)
        return turn, parts

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The vectors the codes stand for (the dropped directions at the mean)."""
        w, kept = self.wide, len(self.lo)
        c = np.empty((len(codes), kept), np.float32)
        c[:, :w] = codes[:, :w]
        c[:, w::2] = codes[:, w : w + (kept - w + 1) // 2] & 15
        c[:, w + 1 :: 2] = codes[:, w : w + (kept - w) // 2] >> 4
        z = self.lo + (c + 0.5) * self.step
        return np.asarray(self.mean + (z if self.rotation is None else z @ self.rotation.T))

    def scores(self, codes: np.ndarray, query: np.ndarray) -> np.ndarray:
        """q . decoded code, less a constant of the query: the sum over directions of
        (q turned)[d] step[d] c[d], computed on the codes as they are."""
        return self.scored(codes, self.weights(query))

    def weights(self, query: np.ndarray) -> tuple[np.ndarray, ...]:
        """What scored() weighs a code's bytes by for `query`: (q turned) step on the 8-bit
        directions, on the low nibbles' and on the high nibbles' (the turn reads the whole
        rotation, 4.9 MB at 1280-d: made once a query, whatever the parts scored with it)."""
        q = np.asarray(query, np.float32)
        turned = q if self.rotation is None else q @ self.rotation
        weights = turned * self.step
        w = self.wide
        narrow = np.zeros(2 * ((len(weights) - w + 1) // 2), np.float32)  # (odd: half a byte)
        narrow[: len(weights) - w] = weights[w:]
        return weights[:w], narrow[0::2].copy(), narrow[1::2].copy()

    def scored(self, codes: np.ndarray, weights: tuple[np.ndarray, ...]) -> np.ndarray:
        """scores() of `codes` by `weights` (weights()), SCORE_PART_BYTES of float32 at a
        time."""
        wide, low, high = weights
        w = len(wide)
        out = np.empty(len(codes), np.float32)
        step = max(1, SCORE_PART_BYTES // (4 * max(w, len(low), 1)))
        for start in range(0, len(codes), step):
            part = codes[start : start + step]
            packed = part[:, w:]
            out[start : start + step] = (
                part[:, :w].astype(np.float32) @ wide
                + (packed & 15).astype(np.float32) @ low
                + (packed >> 4).astype(np.float32) @ high
            )
        return out

    def describe(self) -> str:
        dim, kept = len(self.mean), len(self.lo)
        if self.rotation is None:
            return f"{dim} x 4 bits"
        return f"PCA: {self.wide} x 8 bits, {kept - self.wide} x 4 bits, {dim - kept} dropped"

    def save(self, folder: Path) -> str:
        rotation = np.zeros((0, 0), np.float32) if self.rotation is None else self.rotation
        with open(folder / ALLOTTED_FILE, "wb") as fh:
            np.savez(fh, mean=self.mean, rotation=rotation, lo=self.lo, step=self.step,
                     wide=np.int64(self.wide))  # fmt: skip
        return ALLOTTED_FILE

    @classmethod
    def load(cls, path: Path) -> Allotted:
        """The quantizer save() wrote at `path`; ValueError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                rotation = f["rotation"] if f["rotation"].size else None
                return cls(f["mean"], rotation, f["lo"], f["step"], int(f["wide"]))
        except (zipfile.BadZipFile, KeyError, EOFError, ValueError) as exc:
            raise ValueError(f"{path}: not a saved quantizer: {exc}") from None


def train(sample: np.ndarray) -> Allotted:
    """The allotment of dim / 2 bytes with the least expected error of a query's score, the
    queries like `sample` (the error of a direction: a query's mean square there times the
    code's, step^2 / 12 where coded, the variance where dropped)."""
    x = np.asarray(sample, np.float32)
    if len(x) > PCA_ROWS:
        x = x[np.linspace(0, len(x) - 1, PCA_ROWS).astype(np.int64)]
    dim = x.shape[1]
    mean = x.mean(axis=0)
    centred = x - mean
    variance, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64) / len(x))
    order = np.argsort(-variance)
    basis = np.ascontiguousarray(vectors[:, order], np.float32)
    best: tuple[float, Allotted] | None = None
    for rotated in (False, True):
        z = centred @ basis if rotated else centred
        lo, span = z.min(axis=0), np.maximum(np.ptp(z, axis=0), 1e-12)
        power = (x @ basis if rotated else x) ** 2  # a query's square, direction by direction
        weight = power.mean(axis=0)
        spread = z.var(axis=0)
        for share in WIDE_SHARES if rotated else (0,):
            wide = dim // share if share else 0
            kept = dim - wide
            step = span[:kept] / np.where(np.arange(kept) < wide, 256.0, 16.0)
            error = float(weight[:kept] @ (step**2 / 12) + weight[kept:] @ spread[kept:])
            made = Allotted(
                mean, basis[:, :kept] if rotated else None, lo[:kept].copy(),
                step.astype(np.float32), wide,
            )  # fmt: skip
            if best is None or error < best[0]:
                best = (error, made)
    assert best is not None
    log.info("fine codes: %s (expected score error %.3g)", best[1].describe(), best[0])
    return best[1]


class Nibbles:
    """FAISS's 4-bit scalar quantizer, a range a dimension (the fine codes before Allotted)."""

    def __init__(self, index: Any) -> None:
        import faiss

        self.index = index
        self.code_size = int(index.sa_code_size())
        sq = index.sq
        trained = faiss.vector_to_array(sq.trained)
        if sq.qtype != faiss.ScalarQuantizer.QT_4bit or len(trained) != 2 * sq.d:
            raise ValueError("not a 4-bit scalar quantizer with a range a dimension")
        self.scales = np.ascontiguousarray(trained[sq.d :] / 15.0, dtype=np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.sa_decode(codes))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.sa_encode(np.ascontiguousarray(vectors, np.float32)))

    def scores(self, codes: np.ndarray, query: np.ndarray) -> np.ndarray:
        """q . decoded less a constant: a code c of dimension d decodes to vmin[d] + (c + 0.5)
        x step[d], so q . x ranks as the sum over d of q[d] step[d] c[d]."""
        return self.scored(codes, self.weights(query))

    def weights(self, query: np.ndarray) -> tuple[np.ndarray, ...]:
        """q[d] step[d] for the low nibbles' dimensions and for the high nibbles'."""
        weights = np.zeros(2 * self.code_size, np.float32)  # (odd dim: a half-used last byte)
        weights[: len(self.scales)] = query * self.scales  # dim 2i: byte i's low nibble
        return weights[0::2].copy(), weights[1::2].copy()

    def scored(self, codes: np.ndarray, weights: tuple[np.ndarray, ...]) -> np.ndarray:
        low, high = weights
        scores = (codes & 15).astype(np.float32) @ low
        return np.asarray(scores + (codes >> 4).astype(np.float32) @ high)

    def describe(self) -> str:
        return "SQ4"

    def save(self, folder: Path) -> str:
        import faiss

        faiss.write_index(self.index, str(folder / NIBBLES_FILE))
        return NIBBLES_FILE


def load(folder: Path, name: str) -> Quantizer:
    """The quantizer a base saved in `folder` as `name` (one of FILES)."""
    if name == ALLOTTED_FILE:
        return Allotted.load(folder / name)
    import faiss

    return Nibbles(faiss.read_index(str(folder / name)))
