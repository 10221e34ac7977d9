"""An import's shards read by a child process (imgsearch/bulk/reader.py): the same items as
reading them in the daemon, at the background priority, and its ends: done, failed, killed,
and left alone by a daemon that died."""

from __future__ import annotations

import operator
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from imgsearch.bulk.batches import Unreadable, shard_batches
from imgsearch.bulk.format import PathMap, ShardInfo, shard_info, table_of, write_shard
from imgsearch.bulk.reader import ChildReader, ReaderError
from imgsearch.cpu import BACKGROUND_NICE

DIM = 8


def shards(folder: Path, rows: int = 30) -> list[ShardInfo]:
    """Two shards with bad rows (a relative path, a zero vector, NaN) and one damaged file."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    infos = []
    for s in range(2):
        paths = [f"/lib/{s}/{i:04}.jpg" for i in range(rows)]
        paths[4] = "relative.jpg"
        vectors = rng.normal(size=(rows, DIM))
        vectors[5] = 0
        vectors[6, 2] = np.nan
        facts = {"size": list(range(rows)), "mtime_ns": [7] * rows}
        table = table_of("m", DIM, paths, vectors, facts)
        table = table.append_column("album", pa.array([f"a{i % 3}" for i in range(rows)]))
        path = folder / f"s{s}.parquet"
        write_shard(path, table)
        infos.append(shard_info(path))
    damaged = folder / "s2.parquet"
    damaged.write_bytes(infos[0].path.read_bytes()[: 2 * rows])
    return [*infos, ShardInfo(damaged, "m", DIM, rows)]


def test_the_child_reads_what_the_daemon_would_read(tmp_path: Path) -> None:
    infos = shards(tmp_path / "in")
    done = {"s0.parquet": 3, "s1.parquet": 0, "s2.parquet": 0}
    rename = PathMap.parse(["/lib/1=/photos"])
    direct = list(shard_batches(infos, done, 7, rename))
    with ChildReader(infos, done, rename, part_rows=7) as reader:
        got = list(reader)
    assert reader.proc.returncode == 0
    assert len(got) == len(direct) == 5 + 5 + 1  # record batches of 7 rows (and 2), and one
    for mine, theirs in zip(got, direct, strict=True):
        if isinstance(theirs, Unreadable):
            assert isinstance(mine, Unreadable) and mine.info == theirs.info
            assert str(mine.error) == str(theirs.error) != ""
            continue
        assert not isinstance(mine, Unreadable)
        (info, batch), (want_info, want) = mine, theirs
        assert info == want_info
        assert (batch.rows, batch.paths, batch.bad) == (want.rows, want.paths, want.bad)
        assert (batch.facts, batch.extras) == (want.facts, want.extras)
        np.testing.assert_array_equal(batch.vectors, want.vectors)
    paths = [p for item in got if not isinstance(item, Unreadable) for p in item[1].paths]
    assert paths[0] == "/lib/0/0003.jpg" and "/photos/0000.jpg" in paths
    assert sum(len(item[1].bad) for item in got if not isinstance(item, Unreadable)) == 6


def test_the_child_reads_at_the_background_priority(tmp_path: Path) -> None:
    infos = shards(tmp_path / "in")
    with ChildReader(infos, {i.path.name: 0 for i in infos}, part_rows=1) as reader:
        next(iter(reader))  # it set its priority before it read anything
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, reader.proc.pid) == max(BACKGROUND_NICE, mine)


def test_an_error_in_the_child_fails_the_import_with_its_message(tmp_path: Path) -> None:
    infos = shards(tmp_path / "in")
    rename = operator.methodcaller("no_such_method")  # raises on every path
    with ChildReader(infos, {i.path.name: 0 for i in infos}, rename) as reader:
        with pytest.raises(ReaderError, match="AttributeError: .* 'no_such_method'"):
            list(reader)
    assert reader.proc.returncode not in (0, None)


def test_a_child_killed_early_is_an_error_unless_the_import_stops(tmp_path: Path) -> None:
    infos = shards(tmp_path / "in", rows=3000)
    done = {i.path.name: 0 for i in infos}
    with ChildReader(infos, done, part_rows=10) as reader:
        items = iter(reader)
        next(items)
        reader.proc.kill()
        with pytest.raises(ReaderError, match="ended early"):
            list(items)
    stop = threading.Event()
    with ChildReader(infos, done, part_rows=10, stop=stop) as reader:
        items = iter(reader)
        next(items)
        stop.set()  # a cancelled import or a shutdown: its reader's end is not an error
        reader.proc.kill()
        assert len(list(items)) < 599


def test_the_child_exits_by_itself_when_the_daemon_end_of_its_pipe_closes(tmp_path: Path) -> None:
    """A daemon killed mid-import closes the pipe: its child stops at its next write."""
    infos = shards(tmp_path / "in", rows=3000)
    reader = ChildReader(infos, {i.path.name: 0 for i in infos}, part_rows=10)
    next(iter(reader))
    assert reader.out is not None
    reader.out.close()
    assert reader.proc.wait(30) == 0
