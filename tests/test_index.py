"""The index package on synthetic vectors: every kind, filters, deletions, swaps and replay.

Thresholds are lowered (imgsearch/index/policy.py) so each kind is built from a couple of
thousand vectors in a second or two; the real sizes are measured by bench/scale.py.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch.catalog import INDEX_DIR, Catalog, StoreSource
from imgsearch.errors import Busy
from imgsearch.index import Policy, rotation
from imgsearch.index import base as B
from imgsearch.index.build import build
from imgsearch.index.hits import rescored
from imgsearch.index.policy import HNSW_ADD_EF, TUNE_QUERIES, Spec, lists_for, train_size
from imgsearch.index.tree import CentreTree
from imgsearch.store import FileFacts, NewImage

from .helpers import spectral_vectors

DIM = 32
N = 1500


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in 30 clusters of varied spread (like embeddings), a few near-duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM))
    spread = rng.uniform(0.2, 0.8, 30)
    which = rng.integers(0, 30, n)
    x = centres[which] + spread[which, None] * rng.standard_normal((n, DIM))
    x[1::50] = x[::50][: len(x[1::50])] + 0.01 * rng.standard_normal((len(x[1::50]), DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def near(vectors: np.ndarray) -> np.ndarray:
    """New queries like the library's vectors (a fresh photo of the same subject)."""
    x = vectors + 0.3 * np.random.default_rng(9).standard_normal(vectors.shape) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fill(catalog: Catalog, vectors: np.ndarray, start: int = 0) -> list[int]:
    items = [
        NewImage(FileFacts(f"/v/{start + i}.jpg", 1, 1, f"h{start + i}", 1, 1), v)
        for i, v in enumerate(vectors)
    ]
    ids: list[int] = []
    for at in range(0, len(items), 500):
        ids += catalog.put(items[at : at + 500]).ids
    return ids


def policy(kind: str) -> Policy:
    """Thresholds that make N vectors get `kind` ("ivf-pqfs-hnsw": an HNSW coarse quantizer;
    "-bf16": its lists by bfloat16 k-means; "-two-level": kmeans.two_level)."""
    big = 1 << 40
    return {
        "exact": Policy(exact_max=big, delta_max=big),
        "ivf-flat": Policy(exact_max=100, flat_max_bytes=big, delta_max=big),
        "ivf-pqfs": Policy(exact_max=100, delta_max=big),
        # lists on the rows less their mean, probed by L2 (IMGSEARCH_INDEX_CENTRED=1)
        "ivf-pqfs-centred": Policy(exact_max=100, delta_max=big, centred=True),
        "ivf-pqfs-centred-bf16-two-level": Policy(
            exact_max=100, two_level_min_lists=1, delta_max=big, train_bf16=True, centred=True
        ),
        # adds' lists chosen in bfloat16, codes packed by imgsearch (index/placing.py):
        "ivf-pqfs-bf16": Policy(exact_max=100, delta_max=big, train_bf16=True),
        "ivf-pqfs-hnsw": Policy(exact_max=100, hnsw_min_lists=1, delta_max=big),
        "ivf-pqfs-bf16-hnsw": Policy(
            exact_max=100, hnsw_min_lists=1, delta_max=big, train_bf16=True
        ),  # a graph base of earlier versions, its lists by flat bfloat16 k-means
        # as a 1M+ library on a CPU without native bfloat16 (FAISS's k-means, two-level):
        "ivf-pqfs-two-level": Policy(exact_max=100, two_level_min_lists=1, delta_max=big),
        "ivf-pqfs-bf16-two-level": Policy(
            exact_max=100, two_level_min_lists=1, delta_max=big, train_bf16=True
        ),  # as a 1M+ library on a CPU with native bfloat16
        # as a big library on a CPU without AMX: k-means and adds through a tree of centres
        "ivf-pqfs-tree": Policy(exact_max=100, delta_max=big, tree_from=1),
        "ivf-pqfs-tree-two-level": Policy(
            exact_max=100, two_level_min_lists=1, delta_max=big, tree_from=1
        ),
    }[kind]


def adding_efs(catalog: Catalog) -> set[int]:
    """The efSearch an add would use in the base, its template and the recent segment."""
    import faiss

    segments = catalog.index._segments
    found = set()
    for index in (segments.base.index, segments.base.template, segments.recent):
        graph = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
        found.add(int(graph.hnsw.efSearch))
    return found


def truth(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vectors.T
    return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def test_policy_thresholds() -> None:
    p = Policy()
    assert p.spec(1000, 512).kind == "exact"
    assert p.spec(1_000_000, 512) == Spec("ivf-pqfs", "RPCA,IVF16000,PQ128x4fs", 16000)
    assert p.spec(10_000_000, 512).factory == "RPCA,IVF16384,PQ128x4fs"  # MAX_LISTS; no graph
    assert p.spec(10_000_000, 1280).factory == "RPCA,IVF16384,PQ320x4fs"
    graph = Policy(hnsw_min_lists=8192).spec(10_000_000, 512).factory
    assert graph == "IVF16384_HNSW32,PQ256x4fs"  # (not rotated over a graph: rotation.py)
    # adds compare each vector with every centre at any size (a graph misplaced most of them)
    assert not any("HNSW" in p.spec(n, 512).factory for n in (10**5, 10**6, 10**7, 10**9))
    assert p.spec(100_000, 512).factory == "RPCA,IVF2500,PQ128x4fs"  # 40 training vectors a list
    assert Policy(flat_max_bytes=1 << 40).spec(1_000_000, 512).kind == "ivf-flat"
    assert (
        p.spec(200, 512).kind == "exact" and Policy(exact_max=10).spec(200, 512).kind == "ivf-flat"
    )
    assert train_size(16384, 10_000_000) == 327_680  # MIN_TRAIN_PER_LIST beyond MAX_TRAIN
    assert train_size(16000, 1_000_000) == 320_000 and train_size(1788, 200_000) == 71_520
    assert Policy(mode="exact").spec(10_000_000, 512).kind == "exact"
    assert lists_for(1_000_000) == 16000 and lists_for(10) <= 10
    assert p.needs_training("ivf-pqfs", 200_000, 900_000, 512)  # grown 4.5x
    assert not p.needs_training("ivf-pqfs", 200_000, 700_000, 512)
    assert p.needs_training("ivf-sq8", 200_000, 210_000, 512)  # a kind of earlier versions


@pytest.mark.parametrize(
    "name",
    [
        "exact", "ivf-flat", "ivf-pqfs", "ivf-pqfs-centred", "ivf-pqfs-centred-bf16-two-level",
        "ivf-pqfs-hnsw", "ivf-pqfs-bf16-hnsw",
        "ivf-pqfs-two-level", "ivf-pqfs-bf16-two-level", "ivf-pqfs-tree",
        "ivf-pqfs-tree-two-level",
    ],
)  # fmt: skip
@pytest.mark.usefixtures("any_tree")
def test_every_kind_is_tuned_searches_and_filters(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = clustered(N)
    kind = name.removesuffix("-hnsw").removesuffix("-two-level").removesuffix("-bf16")
    kind = kind.removesuffix("-tree").removesuffix("-centred")
    graph = name.endswith("-hnsw")
    catalog = Catalog(tmp_path, "m", DIM, policy(name))
    try:
        with caplog.at_level(logging.INFO, "imgsearch.index.kmeans"):
            ids = np.asarray(fill(catalog, vectors), np.int64)
            catalog.index.maintain()
        assert ("bf16): " in caplog.text) == ("-bf16" in name), caplog.text
        assert ("tree where worth it): " in caplog.text) == ("-tree" in name), caplog.text
        placer = catalog.index._placer(catalog.index._segments.base.template)
        assert isinstance(getattr(placer, "centres", None), CentreTree) == ("-tree" in name)
        assert ("k-means (two-level" in caplog.text) == name.endswith("-two-level"), caplog.text
        about = catalog.index.describe()
        assert about["kind"] == kind and about["vectors"] == N and about["trained_at"]
        assert ("_HNSW32," in about["factory"]) == graph, about
        centred = None if kind == "exact" else "-centred" in name  # (lists less their mean)
        assert about["centred_lists"] == centred, about
        if graph:  # adds walk the graph at HNSW_ADD_EF, in every copy
            assert adding_efs(catalog) == {HNSW_ADD_EF}
            catalog.close()
            catalog = Catalog(tmp_path, "m", DIM, policy(name))  # and after a start
            assert catalog.index.describe()["origin"] == "loaded"
            assert adding_efs(catalog) == {HNSW_ADD_EF}
        assert (about["rescore"] is not None) == (kind == "ivf-pqfs"), about
        assert about["recall_at_10"] >= 0.97, about
        queries = near(vectors[::30])
        want = truth(vectors, ids, queries, 10)
        got = [[n.id for n in row] for row in catalog.nearest(queries, 10)]
        recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
        assert recall >= 0.9, recall
        if kind == "ivf-pqfs":  # similarities of hits are exact (from the store)
            hit = catalog.nearest(vectors[:1], 1)[0][0]  # vectors[1] is a near-duplicate
            assert hit.id == ids[0] and abs(hit.similarity - 1.0) < 1e-5
        for allowed in (ids[::100], ids[::3]):  # answered from the store / inside FAISS
            catalog.index.policy = Policy(allowed_exact_max=20)
            rows = catalog.nearest(queries[:5], 10, np.sort(allowed))
            for row in rows:
                assert len(row) == 10 and {n.id for n in row} <= set(allowed.tolist())
            exact = truth(vectors[np.isin(ids, allowed)], np.sort(allowed), queries[:5], 1)
            if len(allowed) <= 20 or kind == "exact":
                assert [row[0].id for row in rows] == exact[:, 0].tolist()
    finally:
        catalog.close()


def test_a_graph_base_of_earlier_versions_is_retrained_with_a_flat_quantizer(
    tmp_path: Path,
) -> None:
    """A base whose adds walk an HNSW graph (the policy of earlier versions from 8,192 lists)
    is searched at start-up, then retrained in the background for the policy's flat
    quantizer, even though the library has not grown; a flat base is not retrained again."""
    vectors = clustered(N)
    catalog = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs-hnsw"))
    try:
        ids = np.asarray(fill(catalog, vectors), np.int64)
        catalog.index.maintain()
        assert "_HNSW32," in str(catalog.index.describe()["factory"])
    finally:
        catalog.close()
    catalog = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    try:
        about = catalog.index.describe()
        assert about["origin"] == "loaded" and "_HNSW32," in str(about["factory"])
        assert catalog.nearest(vectors[:1], 1)[0][0].id == ids[0]  # searched meanwhile
        catalog.index.close()  # the worker: this thread runs maintain() at known points
        catalog.index._stop.clear()
        assert catalog.index.maintain() == "train"
        about = catalog.index.describe()
        assert about["kind"] == "ivf-pqfs" and "HNSW" not in str(about["factory"]), about
        assert about["vectors"] == N and about["recall_at_10"] >= 0.97
        assert catalog.index.maintain() is None  # and not again
    finally:
        catalog.close()


def test_codes_that_rank_poorly_are_re_scored_deeper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uniform random vectors (the worst case) through codes re-scored k + 1 deep reach the
    target at no nprobe: the tuning then tries DEEP_RESCORE, and searches use it. Clustered
    vectors meet the target with the usual depths and never try it."""
    from imgsearch.index import policy as P

    monkeypatch.setattr(P, "RESCORE_FACTORS", (1,))
    uniform = unit(np.random.default_rng(5).standard_normal((N, DIM)))
    for name, vectors, deep in (("uniform", uniform, True), ("clustered", clustered(N), False)):
        if not deep:
            monkeypatch.undo()
        catalog, ids = trained_pqfs(tmp_path / name, vectors)
        try:
            about = catalog.index.describe()
            assert about["kind"] == "ivf-pqfs" and about["recall_at_10"] >= 0.97, about
            assert (about["rescore"] == P.DEEP_RESCORE) == deep, about
            queries = vectors[::50]
            recall = found(catalog, vectors, ids, queries)
            assert recall >= 0.95, (name, recall)
            if deep:
                assert rows_re_scored(catalog, queries[0], monkeypatch) == [300, 510]
        finally:
            catalog.close()


@pytest.mark.parametrize(("name", "bar"), [("ivf-pqfs", 0.48), ("ivf-pqfs-centred", 0.42)])
def test_residuals_that_vary_evenly_keep_codes_of_whole_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, bar: float
) -> None:
    """rotation.MIN_CODED_SHARE: uniform random vectors, whose residuals vary evenly, are
    coded by FAISS's PQ on dim / 2 sub-quantizers of the vectors as they are (codes on their
    residuals' first dim / 4 directions found 0.12 of a 1M library's true top 10); embedding-
    like vectors get those rotated codes. Both reach the target and find new queries'
    neighbours, in lists trained on the rows as they are or centred (whose rotated codes,
    of residuals, are scored with each list's inner product with the query: coarse.inner's).
    (The bar lowered: at 1,500 32-d vectors in 12-37 lists, as many as the background build
    finds stored, the residuals keep 0.31-0.41 of their variance in the coded directions for
    the uniform vectors, 0.54-0.61 for the spectral ones; 0.31 and 0.47-0.53 in centred
    lists.)"""
    monkeypatch.setattr(rotation, "MIN_CODED_SHARE", bar)
    rng = np.random.default_rng(7)
    uniform = unit(rng.standard_normal((N, DIM)))
    assert policy("ivf-pqfs").spec(N, DIM).factory.startswith("RPCA,")
    for kind, vectors, rotated in (
        ("uniform", uniform, False),
        ("spectral", spectral_vectors(N, DIM), True),
    ):
        catalog, ids = trained_pqfs(tmp_path / kind, vectors, name)
        try:
            about = catalog.index.describe()
            assert about["centred_lists"] == name.endswith("-centred"), about
            factory, codes = str(about["factory"]), f"PQ{DIM // 4 if rotated else DIM // 2}x4fs"
            assert factory.startswith("RPCA,") == rotated and factory.endswith(codes), about
            assert (catalog.index._segments.transform is not None) == rotated
            assert about["recall_at_10"] >= 0.97, about
            queries = unit(vectors[::50] + 0.05 * rng.standard_normal((len(vectors[::50]), DIM)))
            recall = found(catalog, vectors, ids, queries)
            assert recall >= 0.95, (kind, recall)
        finally:
            catalog.close()


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def trained_pqfs(
    folder: Path, vectors: np.ndarray, name: str = "ivf-pqfs"
) -> tuple[Catalog, np.ndarray]:
    """A new catalog in `folder` (made) of `vectors`, its fast-scan index (`policy(name)`)
    trained; its ids."""
    folder.mkdir()
    catalog = Catalog(folder, "m", DIM, policy(name))
    try:
        ids = np.asarray(fill(catalog, vectors), np.int64)
        catalog.index.maintain()
    except BaseException:
        catalog.close()
        raise
    return catalog, ids


def found(catalog: Catalog, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 of the catalog's searches for `queries` against exact search of `vectors`."""
    want = truth(vectors, ids, queries, 10)
    got = [[n.id for n in row] for row in catalog.nearest(queries, 10)]
    return float(np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)]))


def rows_re_scored(
    catalog: Catalog, query: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Rows read for re-scoring by a search of 20 and one of 500 with RESCORE_MAX_ROWS at 300
    (a deep re-scoring is capped there, and never under k + 10)."""
    from imgsearch.index import reads

    read: list[int] = []
    searcher = catalog.index._reads
    real = searcher.vectors
    monkeypatch.setattr(searcher, "vectors", lambda ids: read.append(len(ids)) or real(ids))
    monkeypatch.setattr(reads, "RESCORE_MAX_ROWS", 300)
    for k in (20, 500):
        assert len(catalog.nearest(query[None], k)[0]) == k
    return read


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pqfs"])
def test_deletions_are_filtered_then_compacted(tmp_path: Path, kind: str) -> None:
    vectors = clustered(N)
    catalog = Catalog(tmp_path, "m", DIM, policy(kind))
    try:
        fill(catalog, vectors)
        catalog.index.maintain()
        catalog.index.rebase()  # the worker may have trained on part of them: all in the base
        removed = catalog.remove_tree("/v")
        assert len(removed) == N and len(catalog.index) == 0
        assert catalog.index.describe()["deleted"] == N
        assert catalog.nearest(vectors[:3], 10) == [[], [], []]
        fill(catalog, vectors[:10], start=N)
        assert [n.path for n in catalog.nearest(vectors[:1], 1)[0]] == [f"/v/{N}.jpg"]
        catalog.index.policy = Policy(exact_max=100, delta_max=1 << 40)
        catalog.index.maintain()  # (or the worker did): few vectors, back to an exact base
        about = catalog.index.describe()
        assert (about["kind"], about["deleted"], about["base"] + about["recent"]) == (
            "exact",
            0,
            10,
        )
        assert sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()
    finally:
        catalog.close()


class SlowSource(StoreSource):
    """Holds a build in the middle of reading the library, until released."""

    def __init__(self, source: StoreSource) -> None:
        super().__init__(source.store)
        self.reading = threading.Event()
        self.release = threading.Event()

    def chunks(self, since_generation: int = 0):  # type: ignore[no-untyped-def]
        for chunk in super().chunks(since_generation):
            self.reading.set()
            assert self.release.wait(30)
            yield chunk


def test_changes_during_training_survive_the_swap(tmp_path: Path) -> None:
    vectors = clustered(N + 20)
    catalog = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        ids = fill(catalog, vectors[:N])
        slow = SlowSource(StoreSource(catalog.store))
        catalog.index.source = slow
        catalog.index.policy = policy("ivf-flat")  # training is due (the worker may start it)
        worker = threading.Thread(target=catalog.index.maintain)
        worker.start()
        assert slow.reading.wait(30)
        assert catalog.index.describe()["state"] == "training"
        catalog.remove_ids(ids[:5])  # while the new base is being built from SQLite
        fill(catalog, vectors[N:], start=N)
        catalog.put([NewImage(FileFacts("/v/7.jpg", 1, 1, "x", 1, 1), vectors[N + 1])])
        hits = catalog.nearest(vectors[N : N + 1], 1)[0]
        assert hits[0].path == f"/v/{N}.jpg", "searches go on against the current index"
        slow.release.set()
        worker.join(60)
        about = catalog.index.describe()
        assert about["kind"] == "ivf-flat" and about["state"] == "idle"
        assert sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()
        assert not {n.id for n in catalog.nearest(vectors[:5], 3)[0]} & set(ids[:5])
        (hit,) = catalog.nearest(vectors[N + 1 : N + 2], 2)
        assert {n.path for n in hit} == {"/v/7.jpg", f"/v/{N + 1}.jpg"}
    finally:
        catalog.close()


def test_a_crash_loses_nothing_sqlite_has(tmp_path: Path) -> None:
    """No close(): the next open replays newer rows and deletions on top of the saved base."""
    vectors = clustered(N)
    first = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    ids = fill(first, vectors[:1000])
    first.index.maintain()
    first.index.rebase()  # all 1000 in the saved base (the worker may have trained on 500)
    fill(first, vectors[1000:], start=1000)
    first.remove_ids(ids[:100])
    first.index.close()  # the worker stops; nothing else is written (as after kill -9)
    first.store.close()
    replayed = N - 1000
    # Fewer replayed rows than settle_min stay exact: no rewrite of the base at each start.
    calm = dataclasses.replace(policy("ivf-pqfs"), settle_min=replayed + 1, tombstone_fraction=1)
    few = Catalog(tmp_path, "m", DIM, calm)
    try:
        assert few.index.maintain() is None and not few.index._segments.coded
        assert few.index.describe()["recent"] == replayed
    finally:
        few.index.close()  # (no compaction ran: the saved base stays the first one)
        few.store.close()
    second = Catalog(tmp_path, "m", DIM, dataclasses.replace(policy("ivf-pqfs"), settle_min=100))
    try:
        about = second.index.describe()
        assert about["origin"] == "replayed" and about["kind"] == "ivf-pqfs"
        assert about["vectors"] == N - 100 and about["recent"] == replayed
        assert sorted(second.index.ids().tolist()) == second.store.ids().tolist()
        assert second.nearest(vectors[1200:1201], 1)[0][0].path == "/v/1200.jpg"
        # Replayed as exact vectors (a copy, not an encoding), then folded into the base.
        assert not second.index._segments.coded
        assert second.index.maintain() in ("compact", None)  # (or the worker did)
        about = second.index.describe()
        assert (about["base"], about["recent"], about["deleted"]) == (N - 100, 0, 0)
        assert second.index._segments.coded
        assert sorted(second.index.ids().tolist()) == second.store.ids().tolist()
    finally:
        second.close()
    third = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    try:  # nothing to replay: coded from the start
        assert third.index._segments.coded and third.index.describe()["origin"] == "loaded"
    finally:
        third.close()


def test_compaction_threshold_grows_with_the_base() -> None:
    p = Policy()
    assert p.delta_limit(0) == p.delta_limit(50_000) == 20_000
    assert p.delta_limit(400_000) == 100_000 and p.delta_limit(10_000_000) == 250_000
    assert Policy(delta_max=5, delta_fraction=0).delta_limit(1_000_000) == 5


def test_a_hold_lets_coded_recent_rows_grow_with_the_base() -> None:
    p = Policy()
    assert p.held_limit(False, 10_000_000) == 200_000  # exact rows: 2 KB each at 512-d
    assert p.held_limit(True, 0) == p.held_limit(True, 1_000_000) == 800_000
    assert p.held_limit(True, 10_000_000) == 5_000_000  # O(n) rewrites for a big import
    assert Policy(held_growth=0).held_limit(True, 10_000_000) == 800_000
    # An exact segment waits for the training sample of an import planned for 10M (16,384
    # lists: 327,680 rows), not only held_delta_max, and codes do not care about it.
    sample = p.train_at(10_000_000, 512)
    assert sample == 327_680 and p.held_limit(False, 0, sample) == sample
    assert p.held_limit(True, 0, sample) == 800_000


def test_a_start_replays_many_newer_rows_as_codes(tmp_path: Path) -> None:
    vectors = clustered(N + 400)
    small = Policy(exact_max=100, delta_max=1 << 40, held_delta_max=50)
    first = Catalog(tmp_path, "m", DIM, small)
    try:
        fill(first, vectors[:N])
        first.index.maintain()  # (or the worker did)
        assert first.index.describe()["kind"] == "ivf-pqfs"
        fill(first, vectors[N:], start=N)  # 400 recent rows: a crash before they are folded
        assert first.index.describe()["recent"] == 400
    finally:
        first.close()
    for held, coded in ((50, True), (1000, False)):  # over held_delta_max: codes, else exact
        again = Catalog(tmp_path, "m", DIM, dataclasses.replace(small, held_delta_max=held))
        try:
            about = again.index.describe()
            assert (about["origin"], about["recent"]) == ("replayed", 400)
            assert again.index._segments.coded is coded
            hits = again.nearest(vectors[N + 7 : N + 8], 10)[0]
            assert f"/v/{N + 7}.jpg" in {h.path for h in hits}
        finally:
            again.close()


def test_a_hold_defers_training_and_compaction_until_it_ends(tmp_path: Path) -> None:
    vectors = clustered(N)
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=100, delta_fraction=0))
    index = catalog.index
    try:
        with index.hold():
            ids = fill(catalog, vectors)
            assert index.maintain() is None  # due, but held: everything in the recent segment
            about = index.describe()
            assert (about["kind"], about["base"], about["recent"]) == ("exact", 0, N)
            assert [n.id for n in catalog.nearest(vectors[:1], 1)[0]] == ids[:1]
            index.policy = Policy(
                exact_max=100, delta_max=100, delta_fraction=0, held_delta_max=N - 1
            )
            assert index.maintain() == "train"  # the segment outgrew the hold's bound
            fill(catalog, vectors[:200], start=N)
            assert index.maintain() is None
            index.make_room(threading.Event())  # 200 recent: under twice the bound, at once
            assert index.describe()["recent"] == 200
            # A coded recent segment (the base is IVF now) may hold CODED_SCALE times as many.
            index.policy = Policy(
                exact_max=100, delta_max=100, delta_fraction=0, held_delta_max=24, held_growth=0
            )
            assert (
                index.policy.held_limit(True, N) == 4 * 24 and index.describe()["recent"] > 2 * 96
            )
            index.make_room(threading.Event())  # over twice the bound: the worker folds it in
            assert index.describe()["recent"] <= 2 * 96
        # Compaction if due, and the full tuning of the import's provisional one (or the
        # worker did them, once released), then nothing.
        ran = [index.maintain() for _ in range(3)]
        assert set(ran) <= {"compact", "tune", None} and ran[-1] is None, ran
        about = index.describe()
        assert about["kind"] == "ivf-pqfs" and about["recent"] <= 100
        assert about["tuning_queries"] == TUNE_QUERIES
        assert sorted(index.ids().tolist()) == catalog.store.ids().tolist()
    finally:
        catalog.close()


class GatedSource(StoreSource):
    """Holds a build before it reads its training sample, until released (chunks run free)."""

    def __init__(self, source: StoreSource) -> None:
        super().__init__(source.store)
        self.reading = threading.Event()
        self.release = threading.Event()

    def vectors(self, ids):  # type: ignore[no-untyped-def]
        self.reading.set()
        assert self.release.wait(30)
        return super().vectors(ids)


def test_a_bulk_writer_waits_at_the_bound_while_a_training_runs(tmp_path: Path) -> None:
    """Rows written during a training are held twice (segment and the build's log): an import
    waits at the hold's bound then, not at twice it; and goes on once the base is swapped in."""
    vectors = clustered(N + 60)
    held = Policy(exact_max=100, delta_max=100, delta_fraction=0, held_delta_max=N - 1)
    catalog = Catalog(tmp_path, "m", DIM, held)
    index = catalog.index
    gate = GatedSource(StoreSource(catalog.store))
    index.source = gate
    try:
        with index.hold():
            fill(catalog, vectors[:N])  # over the bound: the worker starts a training...
            assert gate.reading.wait(30)  # ... held at its training sample's read
            fill(catalog, vectors[N:], start=N)
            recent = index.describe()["recent"]
            assert N - 1 < recent <= 2 * (N - 1)  # under twice the bound: no wait before
            done, stop = threading.Event(), threading.Event()
            writer = threading.Thread(target=lambda: (index.make_room(stop), done.set()))
            writer.start()
            assert not done.wait(1.0), "the writer went on while the training ran"
            gate.release.set()
            assert done.wait(60), "the writer still waits after the training"
            writer.join(5)
            about = index.describe()
            assert about["kind"] == "ivf-pqfs" and about["recent"] <= N - 1
        assert sorted(index.ids().tolist()) == catalog.store.ids().tolist()
    finally:
        gate.release.set()
        catalog.close()


def test_first_start_serves_exact_results_while_the_base_builds(tmp_path: Path) -> None:
    vectors = clustered(N + 1)
    first = Catalog(tmp_path, "m", DIM, policy("ivf-flat"))
    ids = np.asarray(fill(first, vectors[:N]), np.int64)
    first.index.maintain()
    first.close()
    shutil.rmtree(tmp_path / INDEX_DIR)  # no saved base: the first start of a big library
    catalog = Catalog(tmp_path, "m", DIM, policy("ivf-flat"))
    gate = GatedSource(StoreSource(catalog.store))
    catalog.index.source = gate
    try:
        about = catalog.index.describe()
        assert (about["state"], about["origin"], about["vectors"]) == ("building", "building", N)
        assert catalog.index.ids().tolist() == catalog.store.ids().tolist()  # what searches see
        builder = threading.Thread(target=catalog.index.maintain)
        builder.start()
        assert gate.reading.wait(30)
        queries = near(vectors[:20:2])
        got = [[n.id for n in row] for row in catalog.nearest(queries, 10)]
        assert got == truth(vectors[:N], ids, queries, 10).tolist(), "exact, from SQLite"
        scan = catalog.index.policy
        catalog.index.policy = dataclasses.replace(scan, store_scan_max=N - 1)
        with pytest.raises(Busy, match="being built") as busy:  # too many to scan: 503
            catalog.nearest(queries, 10)
        assert busy.value.status == 503 and busy.value.retry_after > 0
        catalog.index.policy = scan
        catalog.remove_ids(ids[:1].tolist())
        (new,) = fill(catalog, vectors[N:], start=N)
        assert [n.id for n in catalog.nearest(vectors[:1], 1)[0]] == [ids[1]]  # a near-duplicate
        assert catalog.nearest(vectors[N:], 1)[0][0].id == new
        gate.release.set()
        builder.join(60)
        about = catalog.index.describe()
        assert (about["kind"], about["origin"], about["state"]) == ("ivf-flat", "rebuilt", "idle")
        assert sorted(catalog.index.ids().tolist()) == catalog.store.ids().tolist()
        assert catalog.nearest(vectors[N:], 1)[0][0].id == new
        assert ids[0] not in {n.id for n in catalog.nearest(vectors[:1], 5)[0]}
    finally:
        catalog.close()


def test_a_first_build_cut_short_starts_again_and_loses_nothing(tmp_path: Path) -> None:
    """The daemon stops (or dies) while building its first base: the next start builds again,
    with the rows written meanwhile."""
    vectors = clustered(N + 10)
    first = Catalog(tmp_path, "m", DIM, policy("exact"))
    fill(first, vectors[:N])
    first.close()
    shutil.rmtree(tmp_path / INDEX_DIR, ignore_errors=True)  # no saved base
    second = Catalog(tmp_path, "m", DIM, policy("ivf-flat"))
    gate = GatedSource(StoreSource(second.store))
    second.index.source = gate
    fill(second, vectors[N:], start=N)  # pokes the worker: it starts the build, held at the gate
    assert gate.reading.wait(30) and second.index.describe()["state"] == "building"
    second.index._stop.set()  # as close() does; the build stops at its next chunk
    gate.release.set()
    second.close()
    assert not list((tmp_path / INDEX_DIR).glob("*-ivf-flat"))  # nothing half-built kept
    third = Catalog(tmp_path, "m", DIM, policy("ivf-flat"))
    try:
        assert third.index.describe()["origin"] == "building" and len(third.index) == N + 10
        assert third.index.maintain() == "train"
        about = third.index.describe()
        assert (about["origin"], about["kind"], about["vectors"]) == ("rebuilt", "ivf-flat", N + 10)
        assert sorted(third.index.ids().tolist()) == third.store.ids().tolist()
    finally:
        third.close()


def test_a_base_of_an_earlier_kind_is_searched_then_retrained(tmp_path: Path) -> None:
    """An IVF-SQ8 base (what earlier versions built at 10M) still answers, re-scored from the
    store, until the worker replaces it with the kind the policy now picks."""
    vectors = clustered(N)
    first = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        ids = np.asarray(fill(first, vectors), np.int64)
        old = build(Spec("ivf-sq8", "IVF16,SQ8", 16), first.index.source, "m", DIM, Policy(),
                    threading.Event())  # fmt: skip
        B.save(old, tmp_path / "index")
    finally:
        first.close()
    second = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    try:
        about = second.index.describe()
        assert (about["kind"], about["origin"]) == ("ivf-sq8", "loaded") and about["rescore"]
        hit = second.nearest(vectors[:1], 1)[0][0]
        assert hit.id == ids[0] and abs(hit.similarity - 1.0) < 1e-5  # exact, from the store
        assert second.index.maintain() == "train"
        about = second.index.describe()
        assert about["kind"] == "ivf-pqfs" and about["recall_at_10"] >= 0.97
    finally:
        second.close()


def test_rescoring_drops_ids_no_longer_stored(tmp_path: Path) -> None:
    vectors = clustered(50)
    catalog = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        ids = np.asarray(fill(catalog, vectors), np.int64)
        catalog.remove_ids([int(ids[3])])
        candidates = np.array([[ids[3], -1, ids[5], ids[4]], [ids[7], ids[3], -1, -1]])
        sims, got = rescored(vectors[[4, 7]], candidates, 3, catalog.index.source.vectors)
        assert got.tolist() == [[ids[4], ids[5], -1], [ids[7], -1, -1]]
        assert abs(sims[0, 0] - 1.0) < 1e-3 and sims[0, 1] < sims[0, 0]
    finally:
        catalog.close()


@pytest.mark.parametrize("kind", ["ivf-pqfs", "ivf-pqfs-bf16"])
def test_a_coded_recent_segment_folds_in_as_if_every_vector_were_encoded(
    tmp_path: Path, kind: str
) -> None:
    """An IVF fast-scan base's recent segment is an empty copy of it (same quantizer and
    codebooks): adds are codes, searched with the base's nprobe, and compaction moves them in
    (merge_into), nothing re-encoded: the new base holds the same ids in the same lists and
    answers exactly as an index that encoded every vector from scratch (by FAISS, or where
    lists are chosen in bfloat16, by the same placer: tests/test_placing.py compares the two)."""
    import faiss

    from imgsearch.index.codes import encoded

    vectors = clustered(N + 300)
    catalog = Catalog(tmp_path, "m", DIM, policy(kind))
    index = catalog.index
    try:
        with index.hold():  # one training, on all of them (from the store: float16)
            ids = fill(catalog, vectors[:1000])
        index.maintain()
        seg = index._segments
        assert seg.coded and seg.base.template is not None and seg.base.template.ntotal == 0
        assert len(seg.base) == 1000
        assert (seg.placer is not None) == kind.endswith("bf16")
        more = fill(catalog, vectors[1000:N], start=1000)
        catalog.remove_ids(ids[:40] + more[:30])  # tombstones in the base; codes out of recent
        replaced = catalog.put(  # same paths, new vectors: base ids and recent ids re-added
            [NewImage(FileFacts(f"/v/{i}.jpg", 1, 1, f"r{i}", 1, 1), vectors[N + j]) for j, i in
             enumerate((50, 60, 1100, 1200))]
        ).ids  # fmt: skip
        assert set(replaced) <= set(ids) | set(more)
        about = index.describe()
        assert (about["base"], about["deleted"], about["recent"]) == (1000, 42, N - 1000 - 30 + 2)
        assert sorted(index.ids().tolist()) == catalog.store.ids().tolist()
        queries = near(vectors[::25])
        before = index.search(queries, 10)
        index.rebase()
        after = index._segments
        assert not after.recent.ntotal and not after.dead and after.coded
        # The same candidates but for ties at the cut (fast-scan scores are coarse integers).
        assert np.mean(before[1] == index.search(queries, 10)[1]) > 0.98
        present = catalog.store.ids()
        assert np.array_equal(after.base.ids, present)
        # What each code was made from: the base's from the store, the recent ones from the
        # vectors as added (float32).
        made = dict(zip(*index.source.vectors(ids), strict=True))
        made.update(zip(more, vectors[1000:N], strict=True))
        made.update(zip(replaced, vectors[N : N + 4], strict=True))
        made_of = np.stack([made[i] for i in present.tolist()])
        reference = encoded(after.base.template, present, made_of, after.placer).index
        lists = B.ivf(reference)
        merged = B.ivf(after.base.index)
        for i in range(lists.nlist):  # every id in the list a fresh encoding puts it in
            want = faiss.rev_swig_ptr(lists.invlists.get_ids(i), lists.invlists.list_size(i))
            got = faiss.rev_swig_ptr(merged.invlists.get_ids(i), merged.invlists.list_size(i))
            assert sorted(got.tolist()) == sorted(want.tolist())
        params = faiss.SearchParametersIVF()
        params.nprobe = lists.nlist
        d1, i1 = reference.search(queries, 20, params=params)
        d2, i2 = after.base.index.search(queries, 20, params=params)
        np.testing.assert_array_equal(d1, d2)  # the same codes: the same approximate scores
        above = d1 > d1[:, -1:]  # the same ids, but for ties at the cut
        assert [set(a[m]) for a, m in zip(i1, above, strict=True)] == [
            set(b[m]) for b, m in zip(i2, above, strict=True)
        ]
    finally:
        catalog.close()


def test_changes_during_a_compaction_survive_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adds, replacements and removals that arrive while a compaction writes the new base are
    replayed into the new segments (most of them off the lock) before they are published."""
    vectors = clustered(N + 600)
    catalog = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    index = catalog.index
    saving, release = threading.Event(), threading.Event()
    real_save = B.save

    def gated_save(base: B.Base, folder: Path, previous: Path | None = None) -> Path:
        saving.set()
        assert release.wait(30)
        return real_save(base, folder, previous)

    try:
        with index.hold():  # one training, on all N (not the first 500: no retraining later)
            ids = fill(catalog, vectors[:N])
        index.maintain()
        more = fill(catalog, vectors[N : N + 300], start=N)
        monkeypatch.setattr(B, "save", gated_save)
        worker = threading.Thread(target=index.rebase)
        worker.start()
        assert saving.wait(30) and index.describe()["state"] == "compacting"
        late = fill(catalog, vectors[N + 300 :], start=N + 300)  # new ids, after the copy
        catalog.remove_ids(ids[:10] + more[:10] + late[:10])
        catalog.put([NewImage(FileFacts("/v/7.jpg", 1, 1, "x", 1, 1), vectors[N + 599])])
        assert catalog.nearest(vectors[N + 400 : N + 401], 1)[0][0].id == late[100]
        release.set()
        worker.join(60)
        about = index.describe()
        assert about["state"] == "idle" and about["recent"] == 300 - 10 + 1
        assert sorted(index.ids().tolist()) == catalog.store.ids().tolist()
        gone = set(ids[:10] + more[:10] + late[:10])
        for row in catalog.nearest(vectors[:10], 5) + catalog.nearest(vectors[N : N + 10], 5):
            assert not {n.id for n in row} & gone
        (hit,) = catalog.nearest(vectors[N + 599 : N + 600], 10)  # (PQ codes of 32-d: coarse)
        assert {"/v/7.jpg", f"/v/{N + 599}.jpg"} <= {n.path for n in hit[:3]}
    finally:
        release.set()
        catalog.close()


def test_merging_codes_into_a_list_of_a_whole_number_of_blocks(tmp_path: Path) -> None:
    """FAISS 1.15's merge_from corrupts the heap when a fast-scan list's length is a multiple
    of its block size in bytes; merge_into appends to such lists itself."""
    import faiss

    from imgsearch.index.codes import Encoded, merge_into, nonempty

    x = clustered(4000, seed=3)
    template = faiss.index_factory(DIM, "IVF2,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    template.train(x)
    block = faiss.downcast_InvertedLists(B.ivf(template).invlists).block_size  # 32 codes x 8 B
    where = template.quantizer.assign(x, 1).ravel()
    first = np.flatnonzero(where == 0)[:block]  # list 0 holds exactly one block size of codes
    assert len(first) == block
    later = np.flatnonzero(where == 0)[block : block + 40]
    later = np.concatenate([later, np.flatnonzero(where == 1)[:30]])
    target = faiss.clone_index(template)
    target.add_with_ids(x[first], first)
    batch = faiss.clone_index(template)
    batch.add_with_ids(x[later], later)
    merge_into(target, Encoded(batch, nonempty(batch)))
    assert (target.ntotal, batch.ntotal) == (len(first) + len(later), 0)
    reference = faiss.clone_index(template)
    reference.add_with_ids(x[np.concatenate([first, later])], np.concatenate([first, later]))
    params = faiss.SearchParametersIVF()
    params.nprobe = 2
    queries = x[np.concatenate([first[::7], later])]
    d1, i1 = reference.search(queries, 10, params=params)
    d2, i2 = target.search(queries, 10, params=params)
    np.testing.assert_array_equal(d1, d2)
    assert [set(r) for r in i1] == [set(r) for r in i2]


def test_codes_encoded_ahead_get_their_ids_as_an_offset_or_list_by_list() -> None:
    """relabel: consecutive ids (new rows) become an offset that merging adds, also where
    merge_into appends a list itself (one block long already); other ids are written list
    by list. Either way the target answers as one built with the real ids."""
    import faiss

    from imgsearch.index.codes import Encoded, merge_into, nonempty, relabel

    x = clustered(4000, seed=3)
    template = faiss.index_factory(DIM, "IVF2,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    template.train(x)
    block = faiss.downcast_InvertedLists(B.ivf(template).invlists).block_size
    where = template.quantizer.assign(x, 1).ravel()
    first = np.flatnonzero(where == 0)[:block]  # list 0: one block size of codes
    later = np.concatenate([np.flatnonzero(where == 0)[block : block + 40],
                            np.flatnonzero(where == 1)[:30]])  # fmt: skip
    params = faiss.SearchParametersIVF()
    params.nprobe = 2
    consecutive = np.arange(50_000, 50_000 + len(later), dtype=np.int64)
    shuffled = np.random.default_rng(0).permutation(consecutive) * 3
    for ids, offset in ((consecutive, 50_000), (shuffled, 0)):
        target = faiss.clone_index(template)
        target.add_with_ids(x[first], first)
        batch = faiss.clone_index(template)
        batch.add_with_ids(x[later], np.arange(len(later), dtype=np.int64))  # positions
        codes = Encoded(batch, nonempty(batch))
        relabel(codes, ids)
        assert codes.offset == offset
        merge_into(target, codes)
        reference = faiss.clone_index(template)
        reference.add_with_ids(x[np.concatenate([first, later])], np.concatenate([first, ids]))
        queries = x[np.concatenate([first[::7], later])]
        d1, i1 = reference.search(queries, 10, params=params)
        d2, i2 = target.search(queries, 10, params=params)
        np.testing.assert_array_equal(d1, d2)
        assert [set(r) for r in i1] == [set(r) for r in i2]
        lists = B.ivf(target).invlists
        stored = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)) for i in (0, 1)]
        assert sorted(np.concatenate(stored).tolist()) == sorted([*first.tolist(), *ids.tolist()])


def test_a_base_saved_without_a_template_gets_one_at_its_first_compaction(
    tmp_path: Path,
) -> None:
    """Bases saved by earlier versions have no template.faiss: their recent segment stays
    exact until the first compaction, which encodes it with a template made then."""
    import json

    vectors = clustered(N)
    first = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    try:
        with first.index.hold():
            fill(first, vectors[:1000])
        first.index.maintain()
    finally:
        first.close()
    (saved,) = B.saved(tmp_path / INDEX_DIR)
    meta = json.loads((saved / B.META).read_text())
    del meta["sizes"][B.TEMPLATE]
    (saved / B.META).write_text(json.dumps(meta))
    (saved / B.TEMPLATE).unlink()
    second = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    try:
        index = second.index
        assert index.describe()["kind"] == "ivf-pqfs" and not index._segments.coded
        more = fill(second, vectors[1000:], start=1000)
        index.rebase()
        seg = index._segments
        assert seg.coded and seg.base.template is not None and len(seg.base) == N
        assert (tmp_path / INDEX_DIR / B.saved(tmp_path / INDEX_DIR)[0].name / B.TEMPLATE).exists()
        hits = second.nearest(vectors[1000:1100], 10)  # (32-d PQ codes: coarse)
        found = np.mean([i in {n.id for n in row} for i, row in zip(more, hits, strict=False)])
        assert found >= 0.95, found
    finally:
        second.close()


class LaggingSource(StoreSource):
    """A store whose exact-vector reads (the re-scoring's) take `lag` seconds more."""

    def __init__(self, source: StoreSource, lag: float) -> None:
        super().__init__(source.store)
        self.lag = lag

    def vectors(self, ids):  # type: ignore[no-untyped-def]
        time.sleep(self.lag)
        return super().vectors(ids)


def test_a_slow_search_is_logged_with_where_its_time_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from imgsearch.index import reads

    vectors = clustered(N)
    catalog = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs"))
    try:
        fill(catalog, vectors)
        catalog.index.maintain()
        assert catalog.index.describe()["kind"] == "ivf-pqfs"
        monkeypatch.setattr(reads, "SLOW_SEARCH_MS", 150.0)
        catalog.index._reads.source = LaggingSource(StoreSource(catalog.store), 0.4)
        with caplog.at_level(logging.WARNING, logger="imgsearch.index.reads"):
            assert catalog.nearest(vectors[:1], 5)[0][0].path == "/v/0.jpg"
        (record,) = [r for r in caplog.records if "slow search" in r.getMessage()]
        found = re.search(r"re-scoring (\d+) rows from the store (\d+) ms", record.getMessage())
        assert found, record.getMessage()
        assert int(found[1]) >= 5 and int(found[2]) >= 380
    finally:
        catalog.close()


class ThreadNotingSource(StoreSource):
    """Notes which threads read exact vectors, and how many ids each read asked for."""

    def __init__(self, source: StoreSource) -> None:
        super().__init__(source.store)
        self.reads: list[tuple[int, int]] = []

    def vectors(self, ids):  # type: ignore[no-untyped-def]
        self.reads.append((threading.get_ident(), len(ids)))
        return super().vectors(ids)


def test_the_rescoring_read_is_split_over_threads_and_loses_nothing(tmp_path: Path) -> None:
    from imgsearch.index import reads

    vectors = clustered(300)
    catalog = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        ids = fill(catalog, vectors)
        catalog.remove_ids(ids[10:20])
        noting = ThreadNotingSource(StoreSource(catalog.store))
        searcher = reads.Searcher(noting)
        searcher.row_us = 2 * reads.SLOW_ROW_US  # rows from the disk: split
        try:
            wanted = sorted(ids[:150])
            found, got = searcher.vectors(wanted)
            assert found.tolist() == [i for i in wanted if i not in ids[10:20]]
            assert np.allclose(got, vectors[[ids.index(i) for i in found.tolist()]], atol=1e-3)
            assert len(noting.reads) == reads.READ_PARTS
            assert len({thread for thread, _ in noting.reads}) >= 2  # (a pool thread may do two)
            assert sum(n for _, n in noting.reads) == 150
            noting.reads.clear()
            found, _ = searcher.vectors(wanted[: reads.READ_SPLIT_MIN - 1])  # a few: one read
            assert len(noting.reads) == 1 and len(found) == reads.READ_SPLIT_MIN - 1 - 10
            assert searcher.vectors(ids[10:20])[0].tolist() == []  # all gone: none found
        finally:
            searcher.close()
    finally:
        catalog.close()


class SlowRows(ThreadNotingSource):
    """Rows that take `row_s` seconds each to read (from the disk, as it were) on a clock of
    their own (`now`), so a busy machine's real read times cannot change what is measured."""

    row_s = 0.0
    now = 0.0

    def clock(self) -> float:
        return self.now

    def vectors(self, ids):  # type: ignore[no-untyped-def]
        self.now += self.row_s * len(ids)
        return super().vectors(ids)


def test_the_rescoring_read_is_split_only_while_rows_come_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows from the page cache are read on the calling thread (hand-offs would cost more);
    once one-thread reads take over SLOW_ROW_US a row they are split, and the probes (one
    read in PROBE_EVERY on one thread) bring them back to one thread when rows come fast
    again."""
    from imgsearch.index import reads

    monkeypatch.setattr(reads, "PROBE_EVERY", 4)
    catalog = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        wanted = sorted(fill(catalog, clustered(100)))
        slow = SlowRows(StoreSource(catalog.store))
        searcher = reads.Searcher(slow, clock=slow.clock)

        def parts() -> int:
            slow.reads.clear()
            assert len(searcher.vectors(wanted)[0]) == 100
            return len(slow.reads)

        try:
            assert [parts() for _ in range(6)] == [1] * 6  # fast rows: one thread
            assert searcher.row_us < reads.SLOW_ROW_US
            slow.row_s = 4 * reads.SLOW_ROW_US / 1e6
            got = [parts() for _ in range(9)]
            assert got[:1] == [1] and searcher.row_us > reads.SLOW_ROW_US  # measured slow
            assert got.count(reads.READ_PARTS) >= 6 and got.count(1) <= 3  # then split, probes
            slow.row_s = 0.0
            got = [parts() for _ in range(4 * 8)]
            assert got[-4:] == [1] * 4 and searcher.row_us < reads.SLOW_ROW_US  # fast again
            assert not searcher.slow_disk()
        finally:
            searcher.close()
    finally:
        catalog.close()


def test_reads_slow_enough_for_a_disk_read_in_are_told_after_a_few(tmp_path: Path) -> None:
    """`slow_disk` (what `--warm-database auto` waits for) once SLOW_DISK_READS timed reads
    average over SLOW_DISK_ROW_US a row; reads from a fast disk never tell it."""
    from imgsearch.index import reads

    catalog = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        wanted = sorted(fill(catalog, clustered(100)))
        rows = SlowRows(StoreSource(catalog.store))
        searcher = reads.Searcher(rows, clock=rows.clock)
        try:
            rows.row_s = 0.5 * reads.SLOW_DISK_ROW_US / 1e6  # slow for a split, not a disk
            for _ in range(2 * reads.PROBE_EVERY):
                searcher.vectors(wanted)
            assert searcher.row_us > reads.SLOW_ROW_US and not searcher.slow_disk()
            rows.row_s = 4 * reads.SLOW_DISK_ROW_US / 1e6
            told = []
            for _ in range(reads.SLOW_DISK_READS * reads.PROBE_EVERY):
                searcher.vectors(wanted)
                told.append(searcher.slow_disk())
            assert told[-1] and not told[0]
        finally:
            searcher.close()
    finally:
        catalog.close()


@pytest.mark.usefixtures("any_tree")
def test_a_build_places_rows_on_its_team_and_the_index_on_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where adds go through the tree of centres, the trees a build makes (its k-means', its
    placer's) run the groups' products on the build's team (an import waits meanwhile); the
    placer the index adds with afterwards, beside an import's other threads, on
    tree.GROUP_THREADS."""
    from imgsearch.index import tree

    made: list[int | None] = []
    real = CentreTree.__init__

    def recording(
        self: CentreTree, centres: np.ndarray, seed: int = 1234, group_threads: int | None = 1
    ) -> None:
        made.append(group_threads)
        real(self, centres, seed, group_threads)

    monkeypatch.setattr(CentreTree, "__init__", recording)
    catalog = Catalog(tmp_path, "m", DIM, policy("ivf-pqfs-tree"))
    try:
        fill(catalog, clustered(N))
        catalog.index.maintain()
        about = catalog.index.describe()
        assert about["kind"] == "ivf-pqfs" and about["trained_at"], about
        # k-means' trees, the build's placer's, then (at the swap) the index's placer's
        assert len(made) >= 3 and set(made[:-1]) == {None} and made[-1] == tree.GROUP_THREADS
        placer = catalog.index._placer(catalog.index._segments.base.template)
        assert placer is not None and isinstance(placer.centres, CentreTree)
        assert placer.centres.group_threads == tree.GROUP_THREADS
        before = len(made)
        fill(catalog, clustered(20, seed=1), start=N)
        assert len(made) == before  # the adds go through that placer
        assert catalog.index.describe()["vectors"] == N + 20
    finally:
        catalog.close()


def test_a_build_stops_while_it_reads_its_training_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training's sample (327,680 random rows at 10M: 19 s from a cold 9M library) is read
    build.SAMPLE_READ rows at a time: a stop set meanwhile ends the build at the next read
    instead of after the whole sample and the k-means."""
    from imgsearch.index import build as build_module
    from imgsearch.index.stopping import Stopped

    monkeypatch.setattr(build_module, "SAMPLE_READ", 100)
    catalog = Catalog(tmp_path, "m", DIM, policy("exact"))
    try:
        fill(catalog, clustered(N))
        source, stop = catalog.index.source, threading.Event()
        reads: list[int] = []
        stop_at = [2]  # the daemon stops during the second read (the first build only)
        real = source.vectors

        def reading(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            reads.append(len(ids))
            if len(reads) == stop_at[0]:
                stop.set()
            return real(ids)

        monkeypatch.setattr(source, "vectors", reading)
        spec = Spec("ivf-pqfs", "IVF16,PQ16x4fs", 16)
        with pytest.raises(Stopped):
            build(spec, source, "m", DIM, Policy(), stop)
        assert reads == [100, 100]
        stop.clear()
        reads.clear()
        stop_at[0] = 0
        made = build(spec, source, "m", DIM, Policy(), stop)  # not stopped: every read
        sample = train_size(16, N)
        whole, last = divmod(sample, 100)
        assert reads[: whole + (last > 0)] == [100] * whole + ([last] if last else [])
        assert len(made.ids) == N and made.meta.recall >= 0.97
    finally:
        catalog.close()
