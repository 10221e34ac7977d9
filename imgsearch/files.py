"""Writing files so that a crash leaves the old version or the new one, never part of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"


def write_atomic(path: Path, data: bytes, *, shared: bool = False) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename.

    Leftover temp files (a crash mid-write) are named TEMP_PREFIX + anything. The file is the
    owner's alone (0600, as mkstemp makes it) unless `shared`: then as open() would make it
    (0666 less the umask), for files other users' processes read (shards, a run's plan).
    """
    write_atomic_with(path, lambda fh: fh.write(data), shared=shared)


def write_atomic_with(
    path: Path, write: Callable[[BinaryIO], object], *, durable: bool = False,
    shared: bool = False,
) -> None:  # fmt: skip
    """Like `write_atomic`, with `write` filling the open temp file. `durable`: the file and its
    folder are fsynced too, so the new version survives a power cut, not only a crash."""
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        if shared:  # (a daemon of another user importing an embed's shards could not read them)
            os.fchmod(fd, 0o666 & ~umask())
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


def umask() -> int:
    """The process's umask, read without changing it (/proc/self/status; 0o022 where that
    is not to be had): os.umask sets it to read it, under every other thread's feet."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def fsync(path: Path) -> None:
    """Flush a file or folder (a folder: the names in it, e.g. after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
