"""Fast-scan codes on the principal directions of the residuals: the index's own rotation.

An IVF search scans the codes of every vector in its probed lists, so the bytes of a code set
its cost (at 10M, ~1.2M codes a search). FAISS's fast-scan PQ gives every sub-quantizer 4 bits,
whatever the variance of its dimensions. A residual (a vector minus its list's centre) varies
mostly along few directions, and a query's score with it is made mostly there. So an index of
this kind (`ROTATED`, policy.Spec) works in a rotated space: an orthonormal transform (FAISS's
`LinearTransform`, the index an `IndexPreTransform` of it) whose coordinate `g * group` is the
g-th principal direction of the training sample's residuals, for each of the PQ's M
sub-quantizers (groups of dim / M coordinates), and whose other coordinates hold the remaining
directions. Each sub-quantizer's 16 centroids are a 1-d k-means of its leading coordinate, zero
elsewhere: a code is 4 bits on each of the first M principal directions and nothing on the rest.
Inner products are kept exactly by the rotation, so the lists, their centres' scores and the
coarse assignment are those of the unrotated space.

At 10M (bench/cascade.py, docs/BENCHMARKS.md): dim / 4 sub-quantizers coded this way (64 B a
code at 512-d) filled a pool of 2,000 candidates as well as dim / 2 coded by FAISS's PQ (128 B)
filled one of 1,000, for 0.6x of the scan (so a rotated base's pool is fine.ROTATED_POOL x k).

Only over a flat coarse quantizer (the policy's). Codes by residual need each vector in its
nearest list: over an HNSW graph of the centres (a policy with hnsw_min_lists lowered) adds at
the graph's efSearch put 63% of rows in another list, whose residual is far outside the range
the codebooks were trained on, and a rotated index found 0.785 of the true top 10 where the same
one over a flat quantizer found all (bench/ivf_reach.py --n 60000 --coarse graph, 300 of 1,500
lists, ad hoc count). So the policy keeps FAISS's unrotated PQ on dim / 2 sub-quantizers, which
codes whole vectors, there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The factory prefix of a rotated index (policy.Spec.factory: "RPCA,IVF16384,PQ128x4fs").
ROTATED = "RPCA,"
# Residuals the principal directions are fitted on (a subset of the training sample). Each
# row's list comes from the k-means where it says (kmeans.train: its last assignment); a search
# of every centre for them took 2.9 of the fit's 3.9 s at 16,384 lists (ad hoc, on the Zen 4).
FIT_ROWS = 32_768
# Codes on the first dim / 4 principal directions only where those hold at least this share of
# the residuals' variance. Embedding-like vectors' residuals vary along few directions (bench/
# scale.py's spectral vectors, whose spectrum is real embeddings': 0.80 at 1M), and there the
# codes rank as FAISS's PQ of twice the bytes does. Residuals that vary evenly (its clustered
# vectors: 0.37-0.42; uniform random ones: 0.31-0.35; ad hoc, 100,000 rows in 1,000 or 2,500
# lists) lose most of a score to the directions left out: at 1M uniform a rotated base found
# 0.12 of the true top 10 with every list probed (docs/BENCHMARKS.md). Such a training keeps
# FAISS's PQ on dim / 2 sub-quantizers of the unrotated vectors (policy.unrotated).
MIN_CODED_SHARE = 0.6


def factory_of(spec_factory: str) -> tuple[str, bool]:
    """The FAISS index_factory string of a spec's factory, and whether it is rotated."""
    if spec_factory.startswith(ROTATED):
        return spec_factory[len(ROTATED) :], True
    return spec_factory, False


@dataclass(frozen=True)
class Fit:
    """What a rotation is fitted on: the centres of an index's lists, the residuals of the
    sample's first FIT_ROWS rows to them, and those residuals' principal directions (columns)
    with the variance along each, falling. Made once a training (fit), used by coded_share
    and train."""

    centres: np.ndarray
    residuals: np.ndarray
    directions: np.ndarray
    variances: np.ndarray

    def share(self, m: int) -> float:
        """The share of the residuals' variance on the first m principal directions."""
        return float(self.variances[:m].sum() / max(float(self.variances.sum()), 1e-30))


def fit(index: Any, sample: np.ndarray, lists: np.ndarray | None = None) -> Fit:
    """The Fit of `index`'s lists (trained on `sample` first where they are not). `lists`:
    each sample row's list as the k-means last assigned it (kmeans.train), else each row's
    nearest centre is searched for."""
    import faiss

    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    centres, residuals = _residuals(ivf, sample, lists)
    directions, variances = principal(residuals)
    return Fit(centres, residuals, directions, variances)


def train(
    index: Any, sample: np.ndarray, lists: np.ndarray | None = None, fitted: Fit | None = None
) -> Any:
    """`index` (an index_factory IVF fast-scan PQ index over inner product, its coarse
    quantizer trained or not) trained on `sample` as a rotated index: an IndexPreTransform
    of the rotation over it, its centres rotated and its codebooks set. `lists` as fit takes
    them; `fitted`: fit's answer for these lists and sample where the caller has it."""
    import faiss

    started = time.monotonic()
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    made = fitted if fitted is not None else fit(index, sample, lists)
    centres, residuals, directions = made.centres, made.residuals, made.directions
    pq = ivf.pq
    m, dim = int(pq.M), int(ivf.d)
    order = interleaved(dim, m)
    rotation = np.ascontiguousarray(directions[:, order].T)  # row c: coordinate c's direction
    ivf.quantizer.reset()
    ivf.quantizer.add(np.ascontiguousarray(centres @ rotation.T))
    leading = np.ascontiguousarray(residuals @ directions[:, :m])  # each group's coded one
    scalar = faiss.ProductQuantizer(m, m, int(pq.nbits))
    scalar.train(leading)
    levels = faiss.vector_to_array(scalar.centroids).reshape(m, -1)
    books = np.zeros((m, levels.shape[1], dim // m), np.float32)
    books[:, :, 0] = levels
    faiss.copy_array_to_vector(books.ravel(), pq.centroids)
    ivf.by_residual = True  # (FAISS's factory makes fast-scan IVF-PQ code the vectors)
    ivf.is_trained = True
    transform = faiss.LinearTransform(dim, dim, False)
    faiss.copy_array_to_vector(rotation.ravel(), transform.A)
    transform.is_orthonormal = True
    transform.is_trained = True
    wrapped = faiss.IndexPreTransform(transform, index)
    log.info(
        "codes on the residuals' principal directions: %d of %d coded, fitted on %d rows in %.1fs",
        m, dim, len(residuals), time.monotonic() - started,
    )  # fmt: skip
    return wrapped


def coded_share(index: Any, sample: np.ndarray, lists: np.ndarray | None = None) -> float:
    """The share of the residuals' variance that the first M principal directions hold (M:
    the index's PQ sub-quantizers, the directions a rotated code keeps), on the rows train()
    fits on: the residuals of `index`'s lists (trained or not, as train() takes them)."""
    return fit(index, sample, lists).share(coded(index))


def coded(index: Any) -> int:
    """How many principal directions a rotated code of `index` keeps: its PQ's sub-quantizers."""
    import faiss

    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    return int(ivf.pq.M)


def _residuals(ivf: Any, sample: np.ndarray, lists: np.ndarray | None) -> tuple[Any, Any]:
    """The centres of `ivf`'s lists (trained on `sample` first where they are not) and the
    residuals of the first FIT_ROWS rows of `sample` to their lists' centres (`lists`: each
    row's list, else the nearest centre)."""
    import faiss

    x = np.ascontiguousarray(sample, np.float32)
    if ivf.quantizer.ntotal != ivf.nlist:
        ivf.train_q1(len(x), faiss.swig_ptr(x), False, ivf.metric_type)
    centres = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    rows = x[:FIT_ROWS]
    if lists is not None and len(lists) == len(x):
        assign = np.asarray(lists[:FIT_ROWS], np.int64)
    else:
        assign = ivf.quantizer.search(rows, 1)[1][:, 0]
    return centres, rows - centres[assign]


def principal(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The principal directions of `residuals` (columns, by falling variance) and the
    variance along each."""
    cov = (residuals.T @ residuals).astype(np.float64) / max(1, len(residuals))
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return np.ascontiguousarray(vectors[:, order], np.float32), values[order]


def interleaved(dim: int, m: int) -> np.ndarray:
    """Which direction each rotated coordinate holds: coordinate g * group holds direction g
    (the one sub-quantizer g codes), the group's others the directions from m on."""
    group = dim // m
    order = np.empty(dim, np.int64)
    order[::group] = np.arange(m)
    rest = np.arange(m, dim).reshape(m, group - 1)
    for j in range(1, group):
        order[j::group] = rest[:, j - 1]
    return order


def transform_of(index: Any) -> Any | None:
    """The rotation of a rotated index (its IndexPreTransform's one transform), else None."""
    import faiss

    if index is None:
        return None
    outer: Any = faiss.downcast_index(index)
    if not isinstance(outer, faiss.IndexPreTransform):
        return None
    chain: Any = outer.chain
    return faiss.downcast_VectorTransform(chain.at(0)) if chain.size() == 1 else None


def into_space(index: Any, x: np.ndarray) -> np.ndarray:
    """`x` in the space of `index`'s inner IVF index: rotated for a rotated index, else as is."""
    return rotated(transform_of(index), x)


def rotated(transform: Any | None, x: np.ndarray) -> np.ndarray:
    """`x` through `transform` (transform_of's), or as is where there is none."""
    if transform is None:
        return x
    return np.asarray(transform.apply(np.ascontiguousarray(x, np.float32)))


@dataclass(frozen=True)
class Coded:
    """What encoding a row needs of a rotation: the directions its sub-quantizers code and
    their coordinates in the rotated space (the other coordinates do not change a code: its
    centroids are zero there), so an add rotates m coordinates, not dim."""

    project: Any  # a FAISS LinearTransform: dim -> m, the coded directions
    columns: np.ndarray  # where they sit in the rotated space
    rotation: np.ndarray  # dim x dim, row c: the direction coordinate c holds

    @classmethod
    def of(cls, index: Any, m: int) -> Coded | None:
        """For a rotated index whose PQ has `m` sub-quantizers; None for any other."""
        import faiss

        transform = transform_of(index)
        if transform is None:
            return None
        dim = int(transform.d_in)
        rotation = faiss.vector_to_array(transform.A).reshape(dim, dim)
        columns = np.arange(0, dim, dim // m)
        project = faiss.LinearTransform(dim, m, False)
        faiss.copy_array_to_vector(np.ascontiguousarray(rotation[columns]).ravel(), project.A)
        project.is_trained = True
        return cls(project, columns, rotation)

    def encodable(self, x: np.ndarray) -> np.ndarray:
        """`x` (unrotated) as rows the sub-quantizers code as they would the rotated rows:
        the coded coordinates rotated (FAISS's product: no GIL held), the others zero."""
        out = np.zeros((len(x), self.rotation.shape[0]), np.float32)
        out[:, self.columns] = self.project.apply(np.ascontiguousarray(x, np.float32))
        return out

    def unrotated(self, centres: np.ndarray) -> np.ndarray:
        """Rotated centres back in the vectors' own space."""
        return np.ascontiguousarray(centres @ self.rotation, np.float32)
