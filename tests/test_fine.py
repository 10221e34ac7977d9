"""Fine codes (imgsearch/index/fine.py): the file of codes, the ranking, and their life beside
the index (saved with a base, written again by a start-up's replay, made anew for a base of an
earlier version, pruned after a new training)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import mmap
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch.catalog import INDEX_DIR, Catalog
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.index import Policy
from imgsearch.index import base as B
from imgsearch.index import fine as F
from imgsearch.index import quantizers as Q
from imgsearch.index.base import ivf
from imgsearch.index.tuning import _kth_scores, _recall
from imgsearch.service import Service
from imgsearch.store import FileFacts, NewImage

from .helpers import CONE_DIM, cone, spectral_vectors, without_worker

N = 1500
POLICY = Policy(exact_max=100, delta_max=1 << 40)  # ivf-pqfs from a few hundred vectors


def fill(catalog: Catalog, vectors: np.ndarray, start: int = 0) -> np.ndarray:
    items = [
        NewImage(FileFacts(f"/f/{start + i}.jpg", 1, 1, f"h{start + i}", 1, 1), v)
        for i, v in enumerate(vectors)
    ]
    return np.asarray(catalog.put(items).ids, np.int64)


def built(folder: Path, vectors: np.ndarray, model_id: str = "m") -> tuple[Catalog, np.ndarray]:
    """A catalog whose base holds `vectors` (trained, saved)."""
    catalog = Catalog(folder, model_id, vectors.shape[1], POLICY)
    ids = fill(catalog, vectors)
    catalog.index.maintain()
    catalog.index.rebase()
    return catalog, ids


def at_depth(catalog: Catalog, monkeypatch: pytest.MonkeyPatch, rescore: int) -> Any:
    """The catalog's segments, their base's re-scoring depth set to `rescore` x k."""
    seg = catalog.index._segments
    meta = dataclasses.replace(seg.base.meta, rescore=rescore)
    monkeypatch.setattr(seg, "base", dataclasses.replace(seg.base, meta=meta))
    return seg


def meta_of(folder: Path) -> dict:
    return json.loads((B.saved(folder / INDEX_DIR)[0] / B.META).read_text())


def test_the_file_grows_and_another_mapping_of_it_follows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "fine-x.u8"
    one = F.FineTable(path, 8)
    ids = np.array([3, F.MIN_ROWS + 5, 3 * F.MIN_ROWS], np.int64)  # past the first size
    codes = rng.integers(1, 256, (3, 8), dtype=np.uint8)
    one.put(ids, codes)
    again = np.array([3, 3], np.int64)  # an id twice in one write: its last row
    one.put(again, codes[1:])
    assert (one.get(again[:1]) == codes[2]).all()
    one.put(ids[:1], codes[:1])
    two = F.FineTable(path, 8)  # e.g. a base reopened from its files
    later = np.array([8 * F.MIN_ROWS], np.int64)
    one.put(later, codes[:1])  # grown again after `two` mapped it
    assert (two.get(np.concatenate([ids, later])) == np.vstack([codes, codes[:1]])).all()
    assert not two.get(np.array([4], np.int64)).any()  # never written: zeros
    one.flush()
    assert path.stat().st_size >= (8 * F.MIN_ROWS + 1) * 8


def resident(table: F.FineTable) -> int:
    """Bytes of `table`'s own mapping of its file in memory (/proc/self/smaps' Rss: other
    mappings of the same file do not count)."""
    start, total, inside = table.rows.ctypes.data, 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if match := re.match(r"([0-9a-f]+)-[0-9a-f]+ ", line):
            inside = int(match.group(1), 16) == start and line.endswith(str(table.path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_rows_written_stay_mapped_and_nothing_else_is(tmp_path: Path) -> None:
    """Written with pwrite (a full disk: ENOSPC, not a SIGBUS through the mapping), the rows
    are read through the mapping at once: resident in the daemon's memory as a mapping's
    pages, which the kernel keeps longer than page cache no process maps (docs/BENCHMARKS.md:
    46 ms a 10M search faulting them back in, not 22), and only theirs."""
    table = F.FineTable(tmp_path / "fine-r.u8", 256)
    codes = np.random.default_rng(3).integers(0, 256, (8000, 256), dtype=np.uint8)
    ids = np.concatenate([np.arange(1000, 9000, 2), np.arange(20_000, 24_000)]).astype(np.int64)
    table.put(ids, codes)  # runs of one row and one run of 4,000
    used = (9000 - 1000 + 4000) * 256  # the pages their rows lie in
    assert 0.95 * used <= resident(table) <= used + (64 << 10)
    assert (table.get(ids) == codes).all()
    assert not table.get(np.arange(1001, 9000, 2)).any()


def test_a_saved_table_is_faulted_in_whole_until_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(F, "WARM_BYTES", 1 << 20)
    path = tmp_path / "fine-w.u8"
    written = F.FineTable(path, 64)
    count = 4 * (1 << 20) // 64 + 123  # four steps and part of a fifth
    codes = np.random.default_rng(1).integers(0, 256, (count, 64), dtype=np.uint8)
    written.put(np.arange(count, dtype=np.int64), codes)
    written.flush()
    del written  # (its mapping closed: only the start-up's below maps the file)
    table = F.FineTable(path, 64)  # a saved table opened at start-up
    used, size = count * 64, path.stat().st_size
    assert size > used + (1 << 20)  # grown past the rows written: a tail of holes
    stop = threading.Event()
    stop.set()
    assert table.warm(stop) == 0 and resident(table) < used // 4
    assert table.warm(threading.Event(), rows=count) == used
    assert 0.95 * used <= resident(table) <= used + (256 << 10)  # the rows, not the holes
    assert table.warm(threading.Event()) == size  # (default: the whole file)
    assert (table.get(np.arange(count, dtype=np.int64)) == codes).all()  # read, not written


def test_a_gather_while_the_table_is_read_in_asks_for_its_pages_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search's candidates gathered during warm() are asked of the kernel at once (one
    WILLNEED a page they touch that warm() has not read yet, rows straddling two pages asking
    both), and read right; before and after warm() a gather asks nothing."""
    monkeypatch.setattr(F, "WARM_BYTES", 1 << 20)
    path = tmp_path / "fine-a.u8"
    table = F.FineTable(path, 640)  # 1280-d codes: rows straddle pages
    codes = np.random.default_rng(2).integers(0, 256, (5000, 640), dtype=np.uint8)
    table.put(np.arange(5000, dtype=np.int64), codes)
    ids = np.array([4000, 6, 4000, 12], dtype=np.int64)
    asked: list[list[int]] = []
    gathered: list[np.ndarray] = []
    ahead: list[int] = []  # warm()'s own read-aheads: at 0, then of the step after each
    advise = F.os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        if length == mmap.PAGESIZE:
            asked[-1].append(offset // mmap.PAGESIZE)
            return advise(fd, offset, length, advice)
        ahead.append(offset)
        if len(ahead) in (1, 3):  # a search before warm()'s first step, and after it
            asked.append([])
            gathered.append(table.get(ids))
        return advise(fd, offset, length, advice)

    monkeypatch.setattr(F.os, "posix_fadvise", spy)
    assert (table.get(ids) == codes[ids]).all() and not asked
    table.warm(threading.Event())
    assert all((rows == codes[ids]).all() for rows in gathered)
    want = {b // mmap.PAGESIZE for i in (4000, 6, 12) for b in (i * 640, i * 640 + 639)}
    assert sorted(asked[0]) == sorted(want) and len(want) == 4  # 6 and 12 straddle
    assert asked[1] == [4000 * 640 // mmap.PAGESIZE]  # 6 and 12 were in the 1st MB, read in
    asked.append([])
    assert (table.get(ids) == codes[ids]).all() and not asked[-1]


def test_a_restarted_index_faults_its_saved_fine_codes_in_on_a_thread(tmp_path: Path) -> None:
    catalog, _ = built(tmp_path, cone(N, 30))
    name = meta_of(tmp_path)["fine"]
    catalog.close()
    again = Catalog(tmp_path, "m", CONE_DIM, POLICY)
    try:
        fine = again.index._segments.base.fine
        assert fine is not None and fine.name == name
        assert resident(fine.table) < 64 << 10  # nothing read before the service asks
        thread = again.index.warm()
        assert thread is not None
        thread.join(30)
        used = (int(again.index._segments.base.ids.max()) + 1) * fine.table.row_bytes
        assert 0.95 * used <= resident(fine.table) <= used + (256 << 10)
    finally:
        again.close()


def test_the_service_faults_the_saved_fine_codes_in_once_it_is_up(
    config: Config, tiny_embedder: Embedder
) -> None:
    config.data_dir.mkdir()
    x = cone(600, 20, dim=tiny_embedder.dim)
    catalog, _ = built(config.data_dir, x, tiny_embedder.model_id)
    catalog.close()
    small = dataclasses.replace(config, index_exact_max=100, index_delta_max=1 << 40)
    service = Service(small, tiny_embedder)
    try:
        about = service.catalog.index.describe()
        assert (about["kind"], about["origin"]) == ("ivf-pqfs", "loaded")
        fine = service.catalog.index._segments.base.fine
        assert fine is not None
        for thread in [t for t in threading.enumerate() if t.name == "fine-warm"]:
            thread.join(30)
        assert resident(fine.table) >= 0.95 * 601 * fine.table.row_bytes
    finally:
        service.close()


def test_ranking_by_fine_codes_keeps_the_true_best(tmp_path: Path) -> None:
    """Of 300 candidates (the exact top 300, shuffled), the 40 kept by their fine codes hold
    the exact top 10 (a random 40 would hold ~1.3 of them); fewer candidates than kept, and
    -1 padding, come back as they were."""
    x = cone(4000, 40)
    ids = np.arange(len(x), dtype=np.int64)
    fine = F.Fine.train(x[:2000], tmp_path)
    fine.put(ids, x)
    rng = np.random.default_rng(1)
    queries = x[:30] + 0.05 * rng.standard_normal((30, CONE_DIM)).astype(np.float32)
    order = np.argsort(-(queries @ x.T), axis=1)
    candidates = rng.permuted(order[:, :300], axis=1)
    kept = fine.rank(queries, candidates, 40)
    found = np.mean([len(set(k) & set(o[:10])) / 10 for k, o in zip(kept, order, strict=True)])
    assert kept.shape == (30, 40) and found >= 0.97, found
    short = np.full((1, 60), -1, np.int64)
    short[0, :25] = candidates[0, :25]
    assert (fine.rank(queries[:1], short, 40) == short[:, :40]).all()


def spectral(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors varying like embeddings: the k-th of `dim` random directions with
    variance k^-1.2 (bench/spectrum.py), around a shared direction."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    scale = np.arange(1, dim + 1) ** -0.6
    x = 0.3 * rng.standard_normal(dim) + (rng.standard_normal((n, dim)) * scale) @ basis.T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def nibbles(sample: np.ndarray) -> Q.Nibbles:
    """The fine codes' quantizer before Allotted: FAISS's SQ4, trained on `sample`."""
    import faiss

    index = faiss.index_factory(sample.shape[1], "SQ4", faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    return Q.Nibbles(index)


def test_scores_on_the_codes_rank_as_the_decoded_codes_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scores computed on the codes as they are differ from q . decoded code only by a
    constant a query (the same ranking): codes of principal directions at 8 and 4 bits, 4
    bits on every dimension as they are, FAISS's SQ4 of earlier bases; an odd dimension (a
    half-used last byte) too. A quantizer saved and loaded codes and scores alike, and codes
    scored a few rows a part (Q.SCORE_PART_BYTES) score as scored whole."""
    rng = np.random.default_rng(2)
    for dim in (CONE_DIM, 37):
        x = spectral(3000, dim, 1)
        flat = rng.standard_normal((3000, dim)).astype(np.float32)
        made = [Q.train(x[:2000]), Q.train(flat[:2000]), nibbles(x[:2000])]
        assert isinstance(made[0], Q.Allotted) and made[0].wide > 0  # (chosen: see below)
        assert isinstance(made[1], Q.Allotted) and made[1].wide == 0
        for quantizer, data in zip(made, (x, flat, x), strict=True):
            folder = tmp_path / f"{dim}-{quantizer.describe()}"
            folder.mkdir()
            again = Q.load(folder, quantizer.save(folder))
            codes = quantizer.encode(data)
            assert codes.shape == (len(data), (dim + 1) // 2)
            assert np.array_equal(again.encode(data), codes)
            decoded = quantizer.decode(codes)
            assert np.mean(np.sum(decoded * data, axis=1)) > 0.9  # it decodes near the input
            if isinstance(quantizer, Q.Allotted):  # each kept direction within half a step
                turn = np.eye(dim) if quantizer.rotation is None else quantizer.rotation
                z, back = (data - quantizer.mean) @ turn, (decoded - quantizer.mean) @ turn
                top = quantizer.lo + quantizer.step * np.where(
                    np.arange(len(quantizer.lo)) < quantizer.wide, 256, 16
                )
                inside = (z >= quantizer.lo) & (z <= top)
                off = np.abs(z - back) / quantizer.step
                assert inside.mean() > 0.99 and off[inside].max() <= 0.5 + 1e-3, off.max()
            for q in rng.standard_normal((5, dim)).astype(np.float32):
                scores = quantizer.scores(codes, q)
                shift = decoded @ q - scores
                assert np.ptp(shift) < 1e-4 * np.ptp(decoded @ q), (dim, np.ptp(shift))
                assert np.allclose(again.scores(codes, q), scores)
                with monkeypatch.context() as patched:
                    patched.setattr(Q, "SCORE_PART_BYTES", 4 * dim * 7)  # 7-14 rows a part
                    assert np.allclose(quantizer.scores(codes, q), scores, rtol=1e-5, atol=1e-5)


def test_embedding_like_vectors_get_8_bits_where_a_score_varies_and_rank_better() -> None:
    """Vectors varying along few directions (like embeddings) get their principal directions
    at 8 bits, the middle at 4, the last none; the best 20 of 300 neighbours by these codes
    hold the true top 10 more often than by 4 bits on every dimension (FAISS's SQ4, the codes
    before), in as many bytes. Vectors varying evenly keep 4 bits everywhere."""
    dim = 128
    x = spectral(20_000, dim, 3)
    queries, stored = x[:50], x[50:]
    allotted, before = Q.train(stored), nibbles(stored)
    assert isinstance(allotted, Q.Allotted) and allotted.rotation is not None
    assert allotted.wide >= dim // 32 and len(allotted.lo) == dim - allotted.wide
    assert "8 bits" in allotted.describe()
    found = {}
    for name, quantizer in (("allotted", allotted), ("before", before)):
        codes = quantizer.encode(stored)
        hits = 0
        for q in queries:
            exact = np.argsort(-(stored @ q))
            pool = exact[:300]
            best = pool[np.argsort(-quantizer.scores(codes[pool], q))[:20]]
            hits += len(set(best.tolist()) & set(exact[:10].tolist()))
        found[name] = hits / (10 * len(queries))
    assert found["allotted"] > found["before"] + 0.02 and found["allotted"] >= 0.95, found
    flat = np.random.default_rng(4).standard_normal((5000, dim)).astype(np.float32)
    even = Q.train(flat)
    assert isinstance(even, Q.Allotted) and even.wide == 0 and even.describe() == "128 x 4 bits"


def test_a_base_saves_its_fine_codes_and_a_restart_writes_the_replayed_ones_again(
    tmp_path: Path,
) -> None:
    """The base names its fine-code file; rows added after it (a kill -9 before the next
    base: their codes may not have reached the file) get their codes written again by the
    replay, and searches rank by them: each new vector finds itself first."""
    x = cone(N + 60, 30)
    catalog, _ = built(tmp_path, x[:N])
    about = catalog.index.describe()
    assert "4 bits" in about["fine_codes"] and about["kind"] == "ivf-pqfs"
    name = meta_of(tmp_path)["fine"]
    assert [p.name for p in F.tables(tmp_path / INDEX_DIR)] == [name]
    late = fill(catalog, x[N:], start=N)
    catalog.index.close()  # nothing more is saved (as after kill -9)
    catalog.store.close()
    table = F.FineTable(tmp_path / INDEX_DIR / name, CONE_DIM // 2)
    table.put(late, np.zeros((len(late), CONE_DIM // 2), np.uint8))  # their codes lost
    table.flush()
    again = Catalog(tmp_path, "m", CONE_DIM, POLICY)
    try:
        fine = again.index._segments.base.fine
        assert fine is not None and fine.name == name
        written = fine.table.get(late)
        assert written.any(axis=1).all()  # none left as lost (zeros)
        # (the store's float16 rows: a rotated direction may fall one level off the float32's)
        assert (written == fine.encode(x[N:])).mean() > 0.99
        hits = again.nearest(x[N:], 5)
        assert [row[0].id for row in hits] == late.tolist()
    finally:
        again.close()


def test_searches_are_timed_by_stage_in_the_index_description(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/stats' `index.search_time`: the searches of the segments are counted and their ms
    summed by stage; at 4 x k re-scored with fine codes, each search adds to all three, and
    the ranking's time (made 3 ms longer here) goes to the fine codes' stage."""
    x = cone(N, 30)
    catalog, _ = built(tmp_path, x)
    try:
        at_depth(catalog, monkeypatch, 4)
        rank = F.Fine.rank

        def slower(self: F.Fine, *args: object) -> np.ndarray:
            time.sleep(0.003)
            return rank(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(F.Fine, "rank", slower)
        before = catalog.index.describe()["search_time"]
        times = [before]
        for q in x[:5]:
            catalog.nearest(q[None], 10)
            times.append(catalog.index.describe()["search_time"])
        assert [t["searches"] - before["searches"] for t in times] == [0, 1, 2, 3, 4, 5]
        steps = list(itertools.pairwise(times))
        for stage in ("lists_ms", "fine_codes_ms", "rescoring_ms"):
            assert all(b[stage] > a[stage] for a, b in steps), stage
        assert all(b["fine_codes_ms"] - a["fine_codes_ms"] >= 3 for a, b in steps)
        assert times[-1]["lists_ms"] - before["lists_ms"] < 5 * 3  # not counted there
    finally:
        catalog.close()


def test_a_base_with_the_earlier_4_bit_codes_loads_and_ranks_by_them(tmp_path: Path) -> None:
    """A base saved by an earlier version (its fine codes FAISS's SQ4, fine.faiss) loads with
    them and its searches rank by them: nothing is made again; each vector finds itself."""
    x = cone(N, 30)
    catalog, ids = built(tmp_path, x)
    catalog.close()
    folder = B.saved(tmp_path / INDEX_DIR)[0]
    meta = json.loads((folder / B.META).read_text())
    (folder / Q.ALLOTTED_FILE).unlink()
    earlier = nibbles(x)
    earlier.save(folder)
    sizes = {f: n for f, n in meta["sizes"].items() if f != Q.ALLOTTED_FILE}
    meta["sizes"] = {**sizes, Q.NIBBLES_FILE: (folder / Q.NIBBLES_FILE).stat().st_size}
    (folder / B.META).write_text(json.dumps(meta))
    table = F.FineTable(tmp_path / INDEX_DIR / meta["fine"], CONE_DIM // 2)
    table.put(ids, earlier.encode(x))
    table.flush()
    again = Catalog(tmp_path, "m", CONE_DIM, POLICY)
    try:
        assert again.index.describe()["fine_codes"] == "SQ4"
        fine = again.index._segments.base.fine
        assert isinstance(fine.quantizer, Q.Nibbles)
        assert np.array_equal(fine.table.get(ids[:50]), earlier.encode(x[:50]))
        assert [row[0].id for row in again.nearest(x[:20], 3)] == ids[:20].tolist()
        assert again.index.maintain() is None  # nothing to make again
    finally:
        again.close()


def test_a_damaged_quantizer_file_is_a_damaged_base(tmp_path: Path) -> None:
    """fine.npz overwritten with other bytes of its size: the base does not load (the start-up
    then rebuilds it from SQLite), with an error that names the file."""
    catalog, _ = built(tmp_path, cone(N, 30))
    catalog.close()
    folder = B.saved(tmp_path / INDEX_DIR)[0]
    path = folder / Q.ALLOTTED_FILE
    path.write_bytes(b"x" * path.stat().st_size)
    with pytest.raises(B.IndexFileError, match=Q.ALLOTTED_FILE):
        B.load(folder, "m", CONE_DIM)


def test_a_base_without_fine_codes_gets_them_and_a_new_training_drops_the_old_file(
    tmp_path: Path,
) -> None:
    """A base whose file is gone (or saved by an earlier version) is searched by re-scoring
    every candidate from the store until the worker writes new codes; a training for a much
    bigger library writes its own file and the old one is deleted."""
    x = cone(4 * N, 30)
    catalog, ids = built(tmp_path, x[:N])
    name = meta_of(tmp_path)["fine"]
    catalog.close()
    (tmp_path / INDEX_DIR / name).unlink()
    again = Catalog(tmp_path, "m", CONE_DIM, POLICY)
    without_worker(again)  # this test runs each job itself
    try:
        assert again.index.describe()["fine_codes"] is None
        assert [row[0].id for row in again.nearest(x[:20], 3)] == ids[:20].tolist()
        assert again.index.maintain() == "fine"
        assert "4 bits" in again.index.describe()["fine_codes"]
        made = meta_of(tmp_path)["fine"]
        assert made != name and [p.name for p in F.tables(tmp_path / INDEX_DIR)] == [made]
        assert [row[0].id for row in again.nearest(x[:20], 3)] == ids[:20].tolist()
        fill(again, x[N:], start=N)  # 4x the trained size: retrained
        assert again.index.maintain() == "train"
        newest = meta_of(tmp_path)["fine"]
        assert newest != made and [p.name for p in F.tables(tmp_path / INDEX_DIR)] == [newest]
    finally:
        again.close()


def test_a_search_ranks_a_pool_by_fine_codes_and_reads_only_the_tuned_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 4 x k re-scored, a search of k = 10 asks the segments for a pool of
    fine.ROTATED_POOL x k candidates (the policy's codes are rotated) and reads 40 rows from
    the store, the best by the fine codes: nearly every exact top 10 is found. A base tuned
    with fine codes that are lost reads fine.POOL x k; one of an
    earlier version (tuned without) asks for 40 and reads them. (Embedding-like vectors: codes
    on their residuals' leading directions, rotation.MIN_CODED_SHARE.)"""
    x = spectral_vectors(N, CONE_DIM)
    catalog, ids = built(tmp_path, x)
    try:
        seg = at_depth(catalog, monkeypatch, 4)
        asked: list[int] = []
        read: list[int] = []
        search, fetch = seg.search, catalog.index._reads.vectors
        monkeypatch.setattr(
            seg, "search", lambda q, k, *a, **kw: asked.append(k) or search(q, k, *a, **kw)
        )
        monkeypatch.setattr(
            catalog.index._reads, "vectors", lambda i: read.append(len(i)) or fetch(i)
        )
        queries = x[::50] + 0.02 * np.random.default_rng(3).standard_normal((30, CONE_DIM))
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        want = ids[np.argsort(-(queries @ x.T), axis=1)[:, :10]]
        got = [[hit.id for hit in catalog.nearest(q[None], 10)[0]] for q in queries]
        assert seg.transform is not None  # (the policy's codes are rotated)
        assert set(asked) == {10 * F.ROTATED_POOL} and set(read) == {40}
        found = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
        assert found >= 0.95, found
        tuned_with = seg.base
        for meta_fine, depth in ((tuned_with.meta.fine, F.POOL), ("", 4)):
            asked.clear(), read.clear()
            lost = dataclasses.replace(tuned_with.meta, fine=meta_fine)
            monkeypatch.setattr(seg, "base", dataclasses.replace(tuned_with, fine=None, meta=lost))
            catalog.nearest(queries[:1], 10)
            assert set(asked) == {10 * depth} and read == [10 * depth], meta_fine
    finally:
        catalog.close()


def test_the_tuning_measures_the_pool_ranked_by_fine_codes(tmp_path: Path) -> None:
    """Uniform random vectors (codes that rank poorly): re-scoring 1 or 4 x k of the IVF's own
    candidates misses more of the true top 10 than as many of the pool ranked by fine codes
    (at 4 x k nearly none), and the tuning measures it so (tuning._recall: tune()'s searches)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, CONE_DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    catalog, ids = built(tmp_path, x)
    try:
        base, source = catalog.index._segments.base, catalog.index.source
        assert base.fine is not None
        q_ids = ids[::15]
        _, queries = source.vectors(q_ids.tolist())
        _, stored = source.vectors(ids.tolist())
        sims = queries @ stored.T
        sims[np.arange(len(q_ids)), np.searchsorted(ids, q_ids)] = -np.inf  # not itself
        truth = ids[np.argsort(-sims, axis=1)[:, :10]]
        lists = int(ivf(base.index).nlist)
        floor = _kth_scores(queries, truth, source.vectors)
        got = {
            (depth, fine is not None): _recall(
                base.index,
                (q_ids, queries),
                (truth, floor),
                source.vectors,
                None,
                depth,
                lists,
                fine,
            )
            for depth in (1, 4)
            for fine in (None, base.fine)
        }
        assert got[1, True] >= got[1, False] + 0.1, got
        assert got[4, True] >= 0.99 > got[4, False], got
    finally:
        catalog.close()


def test_another_recall_target_retunes_the_saved_base_once(tmp_path: Path) -> None:
    """A daemon restarted with another --recall tunes the saved base again (the worker's
    `tune`, the codes unchanged), saves the target with it, and says it in /stats; a restart
    with the same target does nothing, nor one on a base of an earlier version (no target
    saved: it was tuned for the default). A lower target never needs more lists, and what it
    measured meets it."""
    x = cone(N, 30)
    catalog, ids = built(tmp_path, x)
    first = catalog.index.describe()
    catalog.close()
    assert first["target_recall"] == 0.97 and meta_of(tmp_path)["target"] == 0.97
    saved = B.saved(tmp_path / INDEX_DIR)[0] / B.META  # as an earlier version wrote it:
    raw = json.loads(saved.read_text())
    del raw["target"]
    saved.write_text(json.dumps(raw))
    old = Catalog(tmp_path, "m", CONE_DIM, POLICY)  # tuned for the default: nothing to do
    try:
        assert old.index.maintain() is None and old.index.describe()["target_recall"] == 0.97
    finally:
        old.close()
    low = dataclasses.replace(POLICY, target_recall=0.5)
    again = Catalog(tmp_path, "m", CONE_DIM, low)
    try:
        assert again.index.maintain() == "tune"
        about = again.index.describe()
        assert about["target_recall"] == 0.5 and meta_of(tmp_path)["target"] == 0.5
        assert about["nprobe"] <= first["nprobe"] and about["recall_at_10"] >= 0.5
        assert about["base"] == first["base"] and about["trained_at"] == first["trained_at"]
        assert [row[0].id for row in again.nearest(x[:20], 1)] == ids[:20].tolist()
        assert again.index.maintain() is None
    finally:
        again.close()
    same = Catalog(tmp_path, "m", CONE_DIM, low)
    try:
        assert same.index.maintain() is None and same.index.describe()["target_recall"] == 0.5
    finally:
        same.close()
