"""Writing files so that a crash leaves the old version or the new one, never part of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename.

    Leftover temp files (a crash mid-write) are named TEMP_PREFIX + anything.
    """
    write_atomic_with(path, lambda fh: fh.write(data))


def write_atomic_with(
    path: Path, write: Callable[[BinaryIO], object], *, durable: bool = False
) -> None:
    """Like `write_atomic`, with `write` filling the open temp file. `durable`: the file and its
    folder are fsynced too, so the new version survives a power cut, not only a crash."""
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if durable:
        fsync(path.parent)


def fsync(path: Path) -> None:
    """Flush a file or folder (a folder: the names in it, e.g. after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
