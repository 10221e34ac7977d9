"""files.py: atomic writes leave the old version or the new one, and no temp file behind."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from imgsearch.files import TEMP_PREFIX, fsync, write_atomic, write_atomic_with


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_keeps_the_old_version_and_no_temp_file(
    tmp_path: Path, durable: bool
) -> None:
    path = tmp_path / "shard.parquet"
    write_atomic_with(path, lambda fh: fh.write(b"old"), durable=durable)

    def half(fh: BinaryIO) -> None:
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic_with(path, half, durable=durable)
    assert path.read_bytes() == b"old"
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))
    fsync(tmp_path)  # a folder can be fsynced
    fsync(path)
