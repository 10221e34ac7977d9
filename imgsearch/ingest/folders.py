"""The folder producer: the image files under a path, as a list for the ingest core."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .report import AddReport, FileError


def files_to_add(
    target: Path, extensions: frozenset[str], allows: Callable[[Path], bool], report: AddReport
) -> list[Path]:
    """`target` itself (a file) or the image files under it (a folder), resolved; files the
    daemon may not read (a symlink out of the allowed roots) are reported, not listed."""
    found = walk(target, extensions, report) if target.is_dir() else iter([target.resolve()])
    files = []
    for path in found:
        if allows(path):
            files.append(path)
        else:
            report.fail(FileError(str(path), "outside the folders this daemon may read", 403))
    return files


def nameable(path: Path, report: AddReport) -> bool:
    """Whether `path` is text (UTF-8, as SQLite and JSON hold paths); else reported (422).
    A file name of other bytes (Latin-1 from an old archive) reads as lone surrogates, and
    one such name failed the whole batch it was in, or kept a watched folder from syncing."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        report.fail(FileError(shown(path), "file name is not valid UTF-8: rename it", 422))
        return False
    return True


def shown(path: Path | str) -> str:
    """A path as text, bytes that are not UTF-8 written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def walk(root: Path, extensions: frozenset[str], report: AddReport) -> Iterator[Path]:
    """Image files under `root`, resolved, sorted per folder; follows symlinks but not loops."""
    seen: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        report.fail(FileError(str(exc.filename), f"cannot list folder: {exc.strerror}", 403))

    emitted: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=on_error):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() not in extensions:
                continue
            try:
                path = (Path(folder) / name).resolve(strict=True)
            except (OSError, RuntimeError) as exc:
                report.fail(
                    FileError(shown(Path(folder) / name), f"cannot resolve path: {exc}", 404)
                )
                continue
            if not nameable(path, report):
                continue
            if str(path) not in emitted:
                emitted.add(str(path))
                yield path
