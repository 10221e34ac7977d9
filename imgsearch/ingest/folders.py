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
                report.fail(FileError(str(Path(folder) / name), f"cannot resolve path: {exc}", 404))
                continue
            if str(path) not in emitted:
                emitted.add(str(path))
                yield path
