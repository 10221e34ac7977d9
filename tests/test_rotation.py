"""Fast-scan codes on the residuals' principal directions (imgsearch.index.rotation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgsearch.index import rotation

from .helpers import spectral_vectors, trained

DIM = 64


def spectral(n: int, seed: int = 0) -> np.ndarray:
    return spectral_vectors(n, DIM, seed)


def recall_in(index: Any, queries: np.ndarray, x: np.ndarray, depth: int) -> float:
    """How many of each query's exact top 10 the index's best `depth` hold (every list)."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = faiss.extract_index_ivf(index).nlist
    found = index.search(queries, depth, params=params)[1]
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    return float(np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, found, strict=True)]))


def test_codes_on_the_principal_directions_rank_as_twice_the_bytes_do() -> None:
    """dim / 4 sub-quantizers, each coding one principal direction of the residuals, bring
    the true top 10 into a pool of 100 about as often as FAISS's PQ with dim / 2 (twice the
    bytes), far more often than FAISS's PQ with as many bytes."""
    x = spectral(30_000)
    queries = spectral(50, seed=9)
    ids = np.arange(len(x), dtype=np.int64)
    found = {}
    for factory in ("RPCA,IVF64,PQ16x4fs", "IVF64,PQ16x4fs", "IVF64,PQ32x4fs"):
        index = trained(factory, x[:10_000])
        index.add_with_ids(x, ids)
        found[factory] = recall_in(index, queries, x, 100)
    rotated, same_bytes, twice = found.values()
    assert rotated >= twice - 0.03 and rotated >= same_bytes + 0.1, found


def test_the_rotation_keeps_every_inner_product_and_the_lists() -> None:
    """The transform is orthonormal, so a query's score with a centre (and the lists a search
    probes) is what it was unrotated; each sub-quantizer's centroids are zero beyond the one
    direction it codes, and the rotated coordinates hold every direction once."""
    import faiss

    x = spectral(8_000)
    plain = faiss.index_factory(DIM, "IVF32,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    plain.train(x)
    centres = plain.quantizer.reconstruct_n(0, 32)
    index = rotation.train(plain, x)
    transform = rotation.transform_of(index)
    assert transform is not None and rotation.factory_of("RPCA,IVF32,PQ16x4fs")[1]
    a = faiss.vector_to_array(transform.A).reshape(DIM, DIM)
    np.testing.assert_allclose(a @ a.T, np.eye(DIM), atol=1e-5)
    queries = spectral(20, seed=3)
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    rotated = ivf.quantizer.reconstruct_n(0, 32)
    inner = rotation.into_space(index, queries)
    np.testing.assert_allclose(inner @ rotated.T, queries @ centres.T, atol=1e-5)
    books = faiss.vector_to_array(ivf.pq.centroids).reshape(16, 16, 4)
    assert not books[:, :, 1:].any() and np.ptp(books[:, :, 0], axis=1).min() > 0
    assert ivf.by_residual
    assert sorted(rotation.interleaved(DIM, 16).tolist()) == list(range(DIM))
    assert rotation.interleaved(DIM, 16)[::4].tolist() == list(range(16))
    assert rotation.into_space(plain, queries) is queries  # (an index without a rotation)


def test_a_rotated_index_saved_and_read_searches_the_same(tmp_path: Any) -> None:
    """FAISS writes the rotation with the index and reads it back (memory-mapped lists too)."""
    import faiss

    x = spectral(6_000)
    index = trained("RPCA,IVF16,PQ16x4fs", x[:3_000])
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    back = faiss.read_index(str(tmp_path / "i.faiss"), faiss.IO_FLAG_MMAP)
    assert rotation.transform_of(back) is not None and back.ntotal == len(x)
    queries = spectral(20, seed=4)
    np.testing.assert_array_equal(index.search(queries, 10)[1], back.search(queries, 10)[1])


def test_the_fit_takes_the_k_means_lists_where_it_has_them() -> None:
    """rotation.train fits its directions on residuals to the lists it is given (kmeans.train's
    last assignment), without searching the centres again: given each row's nearest list it
    makes the transform the search makes; given the k-means' own (near-best) lists, codes
    that rank as well."""
    import faiss

    from imgsearch.index import kmeans

    x = spectral(20_000)
    queries = spectral(50, seed=9)
    ids = np.arange(len(x), dtype=np.int64)

    def fitted(lists: Any, searched: bool) -> Any:
        index = faiss.index_factory(DIM, "IVF64,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
        made = kmeans.train(index, x[:8_000], True, 0, 1, codes=False)
        if searched:
            made = faiss.extract_index_ivf(index).quantizer.search(x[:8_000], 1)[1][:, 0]
        return rotation.train(index, x[:8_000], made if lists is None else lists)

    def matrix(index: Any) -> np.ndarray:
        return faiss.vector_to_array(rotation.transform_of(index).A)

    searched, given = fitted(None, True), fitted(None, False)
    np.testing.assert_array_equal(matrix(searched), matrix(fitted(None, True)))
    assert not np.array_equal(matrix(searched), matrix(given))  # the k-means' lists were used
    found = []
    for index in (searched, given):
        index.add_with_ids(x, ids)
        found.append(recall_in(index, queries, x, 100))
    assert found[1] >= found[0] - 0.02, found


def test_the_coded_share_tells_embedding_like_residuals_from_even_ones() -> None:
    """coded_share: the first dim / 4 principal directions of embedding-like vectors'
    residuals hold most of their variance (a rotated code keeps it); those of uniform random
    vectors about a quarter plus the sample's noise, under rotation.MIN_CODED_SHARE (the build
    then codes whole vectors)."""
    import faiss

    rng = np.random.default_rng(2)
    uniform = rng.standard_normal((8_000, DIM)).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    shares = []
    for x in (spectral(8_000), uniform):
        index = faiss.index_factory(DIM, "IVF64,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
        shares.append(rotation.coded_share(index, x))
        assert faiss.extract_index_ivf(index).quantizer.ntotal == 64  # (its lists trained)
    assert shares[0] >= rotation.MIN_CODED_SHARE + 0.05 > rotation.MIN_CODED_SHARE - 0.2 > shares[1]


def test_one_fit_serves_the_coded_share_and_the_rotation(monkeypatch: Any) -> None:
    """A build fits the residuals' directions once (rotation.fit) for both the share it checks
    and the rotation it trains: given that fit, train computes no directions again and makes
    the rotation and codebooks it makes from scratch; the share is coded_share's."""
    import faiss

    from imgsearch.index import kmeans

    x = spectral(8_000)
    index = faiss.index_factory(DIM, "IVF32,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    lists = kmeans.train(index, x, True, 0, 1, codes=False)
    other = faiss.clone_index(index)  # the same lists, trained from scratch below
    fit = rotation.fit(index, x, lists)
    assert fit.share(rotation.coded(index)) == rotation.coded_share(index, x, lists)
    calls = [0]
    real = rotation.principal

    def counted(residuals: np.ndarray) -> Any:
        calls[0] += 1
        return real(residuals)

    monkeypatch.setattr(rotation, "principal", counted)
    reused = rotation.train(index, x, lists, fit)
    assert calls[0] == 0
    alone = rotation.train(other, x, lists)
    assert calls[0] == 1

    def parts(made: Any) -> tuple[np.ndarray, np.ndarray]:
        pq = faiss.downcast_index(faiss.extract_index_ivf(made)).pq
        a = faiss.vector_to_array(rotation.transform_of(made).A)
        return a, faiss.vector_to_array(pq.centroids)

    for mine, theirs in zip(parts(reused), parts(alone), strict=True):
        np.testing.assert_array_equal(mine, theirs)
