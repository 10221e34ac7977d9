"""The index as a bulk import grows it, and at the next start: train once for the final size,
compact when the import ends, find deletions in the store's log instead of reading every id.

Real SQLite, real FAISS, small N (the thresholds that matter are derived from N by the policy).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from imgsearch.bulk.format import table_of, write_shard
from imgsearch.bulk.imports import ImportManager
from imgsearch.catalog import Catalog, StoreSource
from imgsearch.embedders import Embedder
from imgsearch.images import BASE_EXTENSIONS
from imgsearch.index import Policy, base
from imgsearch.index.policy import HELD_TUNE_QUERIES, TUNE_QUERIES, lists_for
from imgsearch.ingest import Ingester
from imgsearch.store import FileFacts, NewImage, Rows

from .helpers import clustered, crashed, put_all, without_worker

DIM = 32
BIG = 40_000  # over 25,600 vectors the training sample (40 a list, 4 sqrt(n) lists) is < n
PER_SQRT = 4.0  # (the policy's 16 sqrt(n) lists: from 409,600 vectors)


def counting_trainings(catalog: Catalog) -> list[int]:
    """The library size at each training the index starts (the worker's included)."""
    index, sizes = catalog.index, []
    train = index.train

    def counted() -> base.Base:
        sizes.append(len(index))
        return train()

    index.train = counted  # type: ignore[method-assign]
    return sizes


def settled(catalog: Catalog, done: Callable[[dict[str, object]], bool]) -> dict[str, object]:
    """describe() once `done` holds (the worker or this thread's maintain() does the work)."""
    deadline = time.monotonic() + 60
    while not done(about := catalog.index.describe()):
        assert time.monotonic() < deadline, about
        catalog.index.maintain()
        time.sleep(0.05)
    return about


def test_an_import_that_leaves_nothing_to_fold_is_tuned_fully_at_its_end(tmp_path: Path) -> None:
    """A training during an import is tuned provisionally; when the import ends with no recent
    rows to fold (no compaction), the worker tunes the base again with every query."""
    policy = Policy(lists_per_sqrt=PER_SQRT, exact_max=100, settle_min=1000)
    catalog = Catalog(tmp_path, "m", DIM, policy)
    without_worker(catalog)
    sample = policy.train_at(BIG, DIM)
    try:
        with catalog.index.hold(expected=BIG):
            put_all(catalog, clustered(sample))
            assert catalog.index.maintain() == "train"
            about = catalog.index.describe()
            assert (about["tuning_queries"], about["recent"]) == (HELD_TUNE_QUERIES, 0)
            assert catalog.index._segments.base.meta.provisional
            assert catalog.index.maintain() is None, "not tuned again while the import runs"
        assert catalog.index.maintain() == "tune"
        about = catalog.index.describe()
        assert about["tuning_queries"] == TUNE_QUERIES and about["recall_at_10"] is not None
        assert not catalog.index._segments.base.meta.provisional
        assert catalog.index.maintain() is None
    finally:
        catalog.close()
    again = Catalog(tmp_path, "m", DIM, policy)  # the full tuning was saved with the base
    try:
        assert again.index.describe()["tuning_queries"] == TUNE_QUERIES
    finally:
        again.close()


def test_a_provisional_tuning_saved_before_a_crash_is_tuned_fully_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The daemon dies mid-import, after the training saved a provisionally tuned base: the
    next start loads it as it is and (no import resumed) the worker tunes it on every query."""
    policy = Policy(lists_per_sqrt=PER_SQRT, exact_max=100, settle_min=1000)
    catalog = Catalog(tmp_path, "m", DIM, policy)
    without_worker(catalog)
    with catalog.index.hold(expected=BIG):
        put_all(catalog, clustered(policy.train_at(BIG, DIM)))
        assert catalog.index.maintain() == "train"
        catalog.close()  # (the saved base and SQLite are all a kill -9 leaves)
    again = Catalog(tmp_path, "m", DIM, policy)
    without_worker(again)
    try:
        about = again.index.describe()
        assert (about["origin"], about["tuning_queries"]) == ("loaded", HELD_TUNE_QUERIES)
        assert again.index.maintain() == "tune"
        assert again.index.describe()["tuning_queries"] == TUNE_QUERIES
    finally:
        again.close()


def test_a_bulk_write_trains_once_for_its_final_size_and_compacts_at_its_end(
    tmp_path: Path,
) -> None:
    vectors = clustered(BIG + 500)
    policy = Policy(lists_per_sqrt=PER_SQRT, exact_max=100, settle_min=1000)
    catalog = Catalog(tmp_path, "m", DIM, policy)
    without_worker(catalog)
    trainings = counting_trainings(catalog)
    sample = catalog.index.policy.train_at(BIG, DIM)
    assert 0 < sample < BIG - 4000 and BIG < policy.retune_growth * sample
    try:
        with catalog.index.hold(expected=BIG):
            for at in range(0, BIG, 4000):
                put_all(catalog, vectors[at : at + 4000], start=at)
                ran = catalog.index.maintain()
                assert ran == ("train" if at < sample <= at + 4000 else None), (at, ran)
            about = catalog.index.describe()
            assert about["planned"] == BIG and about["trained_count"] == BIG
            assert f"IVF{lists_for(BIG, PER_SQRT)}," in str(about["factory"])
            assert about["recent"] == BIG - trainings[0], "later rows wait for the import's end"
            # Tuned provisionally (fewer queries: the import waited for it) ...
            assert about["tuning_queries"] == HELD_TUNE_QUERIES and about["nprobe"]
            # (searched among codes now, like the base: among its 10 best, not always first)
            hits = catalog.nearest(vectors[BIG - 1 : BIG], 10)[0]
            assert f"/v/{BIG - 1}.jpg" in {h.path for h in hits}
        tuned_at = catalog.index._segments.base.meta.tuned_count
        assert tuned_at == trainings[0], "tuned on the rows the base held when it was trained"
        assert catalog.index.maintain() == "compact"
        about = catalog.index.describe()
        assert (about["base"], about["recent"], about["planned"]) == (BIG, 0, None)
        # ... so the compaction at the import's end measured nprobe and re-scoring again, on
        # the whole base and every tuning query (the base has not grown retune_growth times).
        assert catalog.index._segments.base.meta.tuned_count == BIG
        assert about["tuning_queries"] == TUNE_QUERIES
        assert about["recall_at_10"] is not None and about["nprobe"]
        assert len(trainings) == 1 and sample <= trainings[0] < BIG
        assert catalog.index.maintain() is None  # nothing more: no retrain at the planned size
        with catalog.index.hold(expected=500):  # a small import: replayed, not worth a base
            put_all(catalog, vectors[BIG:], start=BIG)
        assert catalog.index.maintain() is None and catalog.index.describe()["recent"] == 500
    finally:
        catalog.close()
    again = Catalog(tmp_path, "m", DIM, Policy(lists_per_sqrt=PER_SQRT, exact_max=100))
    try:
        about = again.index.describe()
        assert (about["origin"], about["base"], about["recent"]) == ("replayed", BIG, 500)
    finally:
        again.close()


def test_a_bulk_write_trains_on_its_whole_sample_even_past_the_exact_bound(
    tmp_path: Path,
) -> None:
    """held_delta_max below the planned size's training sample: the exact recent segment
    waits for the sample (the training is not started early on fewer rows, and the rows
    are not compacted into an exact base meanwhile)."""
    policy = Policy(lists_per_sqrt=PER_SQRT, exact_max=100, settle_min=1000, held_delta_max=4000)
    sample = policy.train_at(BIG, DIM)
    assert sample > 2 * policy.held_delta_max  # before the fix: trained at 8,000 rows
    catalog = Catalog(tmp_path, "m", DIM, policy)
    without_worker(catalog)
    trainings = counting_trainings(catalog)
    vectors = clustered(sample + 4000)
    try:
        with catalog.index.hold(expected=BIG):
            ran = []
            for at in range(0, len(vectors), 4000):
                put_all(catalog, vectors[at : at + 4000], start=at)
                ran.append(catalog.index.maintain())
        assert ran.count("train") == 1 and "compact" not in ran[: ran.index("train")], ran
        assert trainings[0] >= sample, (trainings, sample)
        assert catalog.index.describe()["trained_count"] == BIG
    finally:
        catalog.close()


def test_an_import_job_trains_once_and_leaves_nothing_to_replay(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    dim, n = tiny_embedder.dim, 3000
    folder = tmp_path / "in"
    folder.mkdir()
    vectors = clustered(n, dim)
    for s in range(3):
        paths = [f"/lib/{s}/{i:04}.jpg" for i in range(1000)]
        table = table_of(tiny_embedder.model_id, dim, paths, vectors[s * 1000 : (s + 1) * 1000])
        write_shard(folder / f"s{s}.parquet", table)
    data = tmp_path / "data"
    data.mkdir()
    catalog = Catalog(data, tiny_embedder.model_id, dim, Policy(exact_max=100))
    trainings = counting_trainings(catalog)
    ingester = Ingester(
        catalog, tiny_embedder, extensions=BASE_EXTENSIONS, allows=lambda _: True,
        batch_size=4, workers=1, max_file_bytes=10**7, max_pixels=10**8,
    )  # fmt: skip
    manager = ImportManager(ingester, data, batch_rows=250)
    try:
        job = manager.submit(folder)
        assert job.ended.wait(60) and job.state == "done"
        about = settled(catalog, lambda about: about["recent"] == 0 and about["state"] == "idle")
        assert (about["kind"], about["base"], about["trained_count"]) == ("ivf-pqfs", n, n)
        assert len(trainings) == 1
    finally:
        manager.close()
        catalog.close()
    again = Catalog(data, tiny_embedder.model_id, dim, Policy(exact_max=100))
    try:
        assert again.index.describe()["origin"] == "loaded"  # nothing replayed
    finally:
        again.close()


def removed_every_way(catalog: Catalog, ids: list[int]) -> None:
    """Deleted, removed by folder, marked missing (one restored), replaced by a move."""
    catalog.remove_ids(ids[:3])
    catalog.remove_tree("/v/10.jpg")
    catalog.mark_missing("/v/20.jpg")
    catalog.mark_missing("/v/21.jpg")
    catalog.restore([ids[20]])
    catalog.move(ids[30], "/v/31.jpg", 1, 1)  # the row that was at /v/31.jpg goes


def test_a_rebase_trains_where_a_training_is_due_before_the_worker_woke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that has not run yet (a loaded machine) leaves an exact base holding more than
    the exact bound: `rebase` trains it as the worker would, not a compaction keeping it exact."""
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    try:
        monkeypatch.setattr(catalog.index, "maintain", lambda: None)  # the worker never acts
        put_all(catalog, clustered(1000), batch=500)
        assert catalog.index.describe()["kind"] == "exact"
        catalog.index.rebase()
        assert catalog.index.describe()["kind"] != "exact"
        assert len(catalog.index) == 1000
        catalog.index.rebase()  # nothing due now: a compaction keeps the trained base
        assert catalog.index.describe()["kind"] != "exact"
    finally:
        catalog.close()


def test_a_start_finds_deletions_in_the_log_without_reading_every_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = clustered(1000)
    first = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    ids = put_all(first, vectors, batch=500)
    first.index.rebase()
    removed_every_way(first, ids)
    put_all(first, vectors[:5], start=5000)
    crashed(first)

    def unread() -> np.ndarray:
        raise AssertionError("start-up read every present id")

    monkeypatch.setattr(StoreSource, "ids", lambda self: unread())
    second = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    monkeypatch.undo()
    try:
        about = second.index.describe()
        assert about["origin"] == "replayed" and about["recent"] == 5 + 2  # the restored, moved
        assert sorted(second.index.ids().tolist()) == second.store.ids().tolist()
        assert len(second.index) == 1000 - 6 + 5
    finally:
        second.close()


def test_a_base_older_than_the_deletions_log_is_checked_against_every_id(
    tmp_path: Path,
) -> None:
    """A database migrated to the log after its base was saved: the full id scan, once."""
    vectors = clustered(1000)
    first = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    ids = put_all(first, vectors, batch=500)
    first.index.rebase()
    generation = first.store.generation()
    removed_every_way(first, ids)
    crashed(first)
    with sqlite3.connect(tmp_path / "imgsearch.sqlite3") as conn:  # as if v8 came later
        conn.execute("DELETE FROM deletions")
        conn.execute("UPDATE meta SET value=? WHERE key='deletions_from'", (generation + 1,))
    second = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    try:
        assert sorted(second.index.ids().tolist()) == second.store.ids().tolist()
        assert len(second.index) == 1000 - 6
    finally:
        second.close()


def test_the_deletions_log_is_written_with_the_write_that_deletes(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, "m", DIM, Policy())
    try:
        ids = put_all(catalog, clustered(50), batch=50)
        before = catalog.store.generation()
        assert catalog.store.images.deleted_since(before) is not None
        assert catalog.store.images.deleted_since(before).tolist() == []  # type: ignore[union-attr]
        removed_every_way(catalog, ids)
        logged = catalog.store.images.deleted_since(before)
        assert logged is not None
        assert set(logged.tolist()) == {*ids[:3], ids[10], ids[20], ids[21], ids[31]}
        generation = catalog.store.generation()
        assert catalog.store.images.deleted_since(generation).tolist() == []  # type: ignore[union-attr]
        assert catalog.store.images.deleted_since(-1) is None  # older than the log
    finally:
        catalog.close()


def test_an_interrupted_import_resumes_into_the_plan(tmp_path: Path) -> None:
    """kill -9 mid-import: the next start replays the rows, and a new hold trains once."""
    vectors = clustered(BIG)
    first = Catalog(tmp_path, "m", DIM, Policy(exact_max=100))
    with first.index.hold(expected=BIG):
        put_all(first, vectors[: BIG // 2])
        crashed(first)
    second = Catalog(tmp_path, "m", DIM, Policy(exact_max=100))
    trainings = counting_trainings(second)
    try:
        assert len(second.index) == BIG // 2
        with second.index.hold(expected=BIG - BIG // 2):
            put_all(second, vectors[BIG // 2 :], start=BIG // 2)
        about = settled(second, lambda about: about["recent"] == 0 and about["state"] == "idle")
        assert about["kind"] == "ivf-pqfs" and about["trained_count"] == BIG
        assert len(trainings) == 1
        assert sorted(second.index.ids().tolist()) == second.store.ids().tolist()
    finally:
        second.close()


def test_a_saved_base_trims_the_deletions_log(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    try:
        ids = put_all(catalog, clustered(1000), batch=500)
        catalog.index.rebase()
        before = catalog.store.generation()
        removed_every_way(catalog, ids)
        logged = catalog.store.images.deleted_since(before)
        assert logged is not None and len(logged) == 7  # (the restored one too)
        catalog.index.rebase()  # the new base holds those deletions
        assert catalog.store.images.deleted_since(before) is None
        rows = catalog.store.db.reader().execute("SELECT count(*) FROM deletions").fetchone()
        assert rows[0] == 0
        catalog.remove_ids(ids[40:41])
        logged = catalog.store.images.deleted_since(catalog.index.describe()["generation"])
        assert logged is not None and logged.tolist() == [ids[40]]
    finally:
        catalog.close()


def test_the_index_is_idle_only_once_the_old_base_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/stats's "idle" promises a settled data folder: no old base left half-deleted beside
    the new one (a watcher of the state once found an old base's temporary still there)."""
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    states: list[str] = []
    real = base.prune

    def watched(folder: Path, keep: Path) -> None:
        states.append(catalog.index.state)
        real(folder, keep)

    monkeypatch.setattr(base, "prune", watched)
    try:
        put_all(catalog, clustered(1000), batch=500)
        catalog.index.rebase()
        catalog.index.rebase()  # a compaction: the first base is deleted
        assert states and "idle" not in states, states
        assert catalog.index.state == "idle"
        names = [p.name for p in (tmp_path / "index").iterdir()]
        assert not [n for n in names if n.endswith(base.TEMP_SUFFIX)], names
    finally:
        catalog.close()


def test_nprobe_is_tuned_again_at_twice_the_size_never_during_an_import() -> None:
    p = Policy()
    assert p.needs_retune("ivf-pqfs", 1000, 2000, holds=0)
    assert not p.needs_retune("ivf-pqfs", 1000, 1999, holds=0)
    assert not p.needs_retune("ivf-pqfs", 1000, 5000, holds=1)  # an import holds the index
    assert not p.needs_retune("ivf-pqfs", 0, 5000, holds=0)  # a base that did not record it
    assert not p.needs_retune("exact", 1000, 5000, holds=0)
    # A provisional tuning (fewer queries, during an import) is tuned again once none holds.
    assert p.needs_retune("ivf-pqfs", 1000, 1000, holds=0, provisional=True)
    assert not p.needs_retune("ivf-pqfs", 1000, 5000, holds=1, provisional=True)
    assert not p.needs_retune("exact", 1000, 1000, holds=0, provisional=True)


def test_rows_encoded_ahead_of_their_write_are_found_under_their_ids(tmp_path: Path) -> None:
    import faiss

    from imgsearch.index import Precoded

    vectors = clustered(4000)
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    without_worker(catalog)
    try:
        put_all(catalog, vectors[:3000])
        assert catalog.index.maintain() == "train" and catalog.index._segments.coded
        for start, fresh in ((3000, True), (3500, False)):
            part = vectors[start : start + 500]
            ahead = catalog.index.encode(part)
            assert ahead is not None and ahead.count == 500
            if not fresh:  # codes of another template (a retraining meanwhile): encoded again
                ahead = Precoded(faiss.clone_index(ahead.template), ahead.codes, ahead.count)
            items = [
                NewImage(FileFacts(f"/w/{start + i}.jpg", 1, 1, f"w{start + i}", 1, 1), v)
                for i, v in enumerate(part)
            ]
            ids = catalog.put(items, ahead).ids
            assert int(ahead.codes.index.ntotal) == (0 if fresh else 500)  # moved in, or not
            assert set(ids) <= set(catalog.index._segments.recent_ids().tolist())
            for i in range(0, 500, 25):  # each row under its own id (among its 10 best)
                hits = catalog.nearest(part[i : i + 1], 10)[0]
                assert f"/w/{start + i}.jpg" in {h.path for h in hits}, (start, i)
    finally:
        catalog.close()


def test_rows_are_checked_as_columns(tmp_path: Path, tiny_embedder: Embedder) -> None:
    """check_embedded (the import's, a batch as columns) refuses a NaN, a zero vector and a
    relative path, each with its reason, scales the good rows to unit length in order, and
    keeps their facts; the caller's matrix is not scaled."""
    dim = tiny_embedder.dim
    vectors = clustered(40, dim) * 3
    vectors[5] = np.nan
    vectors[7] = 0
    given = vectors.copy()
    catalog = Catalog(tmp_path, tiny_embedder.model_id, dim, Policy(exact_max=100))
    ingester = Ingester(
        catalog, tiny_embedder, extensions=BASE_EXTENSIONS, allows=lambda _: True,
        batch_size=4, workers=1, max_file_bytes=10**7, max_pixels=10**8,
    )  # fmt: skip
    try:
        paths = [f"/i/{i}.jpg" if i != 9 else "relative.jpg" for i in range(len(vectors))]
        facts = [FileFacts(p, i, i + 1, f"h{i}", 2, 3) for i, p in enumerate(paths)]
        checked = ingester.check_embedded(Rows.of_facts(facts, vectors))
        assert checked.good == 37 and checked.ahead is None
        assert [(e.image, e.status) for e in checked.errors] == [
            ("/i/5.jpg", 422),
            ("/i/7.jpg", 422),
            ("relative.jpg", 400),
        ]
        assert "512-d" in checked.errors[0].error or f"{dim}-d" in checked.errors[0].error
        kept = [i for i in range(40) if i not in (5, 7, 9)]
        assert [checked.rows.facts(n) for n in range(37)] == [facts[i] for i in kept]
        want = vectors[kept] / np.linalg.norm(vectors[kept], axis=1, keepdims=True)
        np.testing.assert_allclose(checked.rows.vectors, want, rtol=1e-6)
        assert np.array_equal(vectors, given, equal_nan=True)  # the caller's array unscaled
        wrong = ingester.check_embedded(Rows.of_facts(facts[:2], vectors[:2, :10]))
        assert wrong.good == 0 and all("got 10 values" in e.error for e in wrong.errors)
    finally:
        catalog.close()


def test_an_import_batch_partly_skipped_drops_the_codes_made_ahead(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    dim = tiny_embedder.dim
    vectors = clustered(3400, dim)
    catalog = Catalog(tmp_path, tiny_embedder.model_id, dim, Policy(exact_max=100))
    without_worker(catalog)
    ingester = Ingester(
        catalog, tiny_embedder, extensions=BASE_EXTENSIONS, allows=lambda _: True,
        batch_size=4, workers=1, max_file_bytes=10**7, max_pixels=10**8,
    )  # fmt: skip
    try:
        facts = [FileFacts(f"/i/{i}.jpg", 1, 1, f"i{i}", 1, 1) for i in range(len(vectors))]
        items = [NewImage(f, v) for f, v in zip(facts, vectors, strict=True)]
        ingester.add_embedded(Rows.of(items[:3000]), batch_size=3000)
        assert catalog.index.maintain() == "train" and catalog.index._segments.coded
        # 200 stored unchanged (skipped), 200 new, one bad: the codes do not fit the write
        bad = NewImage(FileFacts("relative.jpg", 1, 1, "r", 1, 1), vectors[0])
        checked = ingester.check_embedded(Rows.of([*items[2800:], bad]), encode=True)
        assert checked.good == 600 and checked.ahead is not None
        report = ingester.add_embedded(checked, batch_size=600)
        assert (report.added, report.skipped, len(report.errors)) == (400, 200, 1)
        assert int(checked.ahead.codes.index.ntotal) == 600  # not used: encoded again
        for i in range(3000, 3400, 20):
            hits = catalog.nearest(vectors[i : i + 1], 10)[0]
            assert f"/i/{i}.jpg" in {h.path for h in hits}, i
    finally:
        catalog.close()


def test_rows_added_during_a_compaction_are_replayed_as_codes(tmp_path: Path) -> None:
    from imgsearch.index.codes import Encoded

    vectors = clustered(3800)
    catalog = Catalog(tmp_path, "m", DIM, Policy(exact_max=100, delta_max=1 << 40))
    without_worker(catalog)
    index = catalog.index
    try:
        put_all(catalog, vectors[:3000])
        assert index.maintain() == "train"
        put_all(catalog, vectors[3000:3300], start=3000)
        compact, logged = index.compact, []

        def compact_while_adding() -> base.Base:
            made = compact()
            put_all(catalog, vectors[3300:3800], start=3300)  # arrives during the build
            logged.extend(index._ledger.since())
            return made

        index.compact = compact_while_adding  # type: ignore[method-assign]
        index.rebase()
        assert logged and all(isinstance(e[3], Encoded) for e in logged if e[1] == "add")
        assert all(int(e[3].index.ntotal) == 0 for e in logged)  # moved in at the swap
        about = index.describe()
        assert (about["base"], about["recent"]) == (3300, 500)
        for i in range(3300, 3800, 25):
            hits = catalog.nearest(vectors[i : i + 1], 10)[0]
            assert f"/v/{i}.jpg" in {h.path for h in hits}, i
        assert sorted(index.ids().tolist()) == catalog.store.ids().tolist()
    finally:
        catalog.close()


def test_the_deletions_log_is_trimmed_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trimming a long log never holds the write lock for all of it: every chunk is its own
    transaction (a write in between goes through), and all of it goes, newer rows kept."""
    from imgsearch.store import images as store_images

    monkeypatch.setattr(store_images, "FORGET_CHUNK", 4)
    catalog = Catalog(tmp_path, "m", DIM, Policy())
    try:
        ids = put_all(catalog, clustered(60), batch=60)
        catalog.remove_ids(ids[:30])
        generation = catalog.store.generation()
        catalog.remove_ids(ids[30:33])
        db = catalog.store.db
        transactions = []
        real = db.write

        @contextmanager
        def counted():  # type: ignore[no-untyped-def]
            with real() as conn:
                transactions.append(conn.execute("SELECT count(*) FROM deletions").fetchone()[0])
                yield conn

        monkeypatch.setattr(db, "write", counted)
        catalog.store.images.forget_deletions(generation)
        assert transactions == [33, 33, 29, 25, 21, 17, 13, 9, 5]  # meta, then 4 a chunk
        logged = catalog.store.images.deleted_since(generation)
        assert logged is not None and logged.tolist() == ids[30:33]
        assert catalog.store.images.deleted_since(generation - 1) is None
    finally:
        catalog.close()
