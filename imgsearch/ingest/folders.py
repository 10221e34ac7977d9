"""The folder producer: the image files under a path, as a list for the ingest core; and
what the file system says of a stored path (there, gone, or not to be told)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..security import OUTSIDE
from .report import AddReport, FileError

# What os.stat says when a path is not there: anything else (EACCES, EIO) tells nothing.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def files_to_add(
    target: Path, extensions: frozenset[str], allows: Callable[[Path], bool], report: AddReport
) -> list[Path]:
    """`target` itself (a file) or the image files under it (a folder), resolved; files the
    daemon may not read (a symlink out of the allowed roots) are reported, not listed."""
    if target.is_dir():
        return list(walk(target, extensions, report, allows=allows))
    path = target.resolve()
    if allows(path):
        return [path]
    report.fail(FileError(shown(target), OUTSIDE, 403))
    return []


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


@dataclass
class Listing:
    """Where a walk went besides its files, as resolved paths: `tops`, the root and each
    symlinked folder it followed (what it saw is stored under those, not under the root), and
    `unlisted`, the folders it could not list (what is stored there was not seen, not gone)."""

    tops: set[str] = field(default_factory=set)
    unlisted: set[str] = field(default_factory=set)
    # The symlinks to folders it followed, each as its parent resolved + its name (as a
    # watcher names a deleted one): what could take a symlinked folder away.
    links: set[str] = field(default_factory=set)


def walk(
    root: Path,
    extensions: frozenset[str],
    report: AddReport,
    listing: Listing | None = None,
    *,
    allows: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Image files under `root`, resolved, sorted per folder; follows symlinks but not loops.
    `listing`, if given, is filled in as the walk goes. `allows` (a resolved path): where a
    symlink leads out of what it allows, the walk goes no further and reports the link by its
    name under `root` (403), never what lies behind it: the caller learns no more than a
    direct request for that path would tell it (the same 403 whether it exists or not)."""
    seen: set[tuple[int, int]] = set()
    listing = Listing() if listing is None else listing

    def on_error(exc: OSError) -> None:
        report.fail(FileError(str(exc.filename), f"cannot list folder: {exc.strerror}", 403))
        if exc.filename is not None:
            listing.unlisted.add(os.path.realpath(exc.filename))

    emitted: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=on_error):
        try:
            st = os.stat(folder)
        except OSError:
            listing.unlisted.add(os.path.realpath(folder))
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        real = os.path.realpath(folder)
        if folder == os.fspath(root) or os.path.islink(folder):
            listing.tops.add(real)
            if folder != os.fspath(root):
                listing.links.add(in_real_folder(folder))
        dirs.sort()
        if allows is not None:
            dirs[:] = [d for d in dirs if _descend(folder, real, d, allows, report)]
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
            if allows is not None and not allows(path):
                report.fail(FileError(shown(Path(folder) / name), OUTSIDE, 403))
                continue
            if not nameable(path, report):
                continue
            if str(path) not in emitted:
                emitted.add(str(path))
                yield path


def _descend(
    folder: str, real: str, name: str, allows: Callable[[Path], bool], report: AddReport
) -> bool:
    """Whether the walk may go into `folder`/`name` (`real`: `folder` resolved); a symlink
    whose target `allows` refuses is reported by its own name. A plain subfolder is resolved
    from its parent's real path, without another walk of the path's components."""
    inside = os.path.join(folder, name)
    target = os.path.realpath(inside) if os.path.islink(inside) else os.path.join(real, name)
    if allows(Path(target)):
        return True
    report.fail(FileError(shown(inside), OUTSIDE, 403))
    return False


def in_real_folder(path: str) -> str:
    """`path` with its folder resolved and its own name kept: a link's own path, or a deleted
    file's as it was stored (a watcher names both through the link it watches by)."""
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name)


def is_file(path: str) -> bool | None:
    """Whether `path` is a regular file (itself or through a link); None where the system
    cannot tell (EACCES under an unreadable folder, EIO): that is no sign it went."""
    return _is(path, stat.S_ISREG)


def is_folder(path: str) -> bool | None:
    """Whether `path` is a folder (itself or through a link); None where that cannot be told."""
    return _is(path, stat.S_ISDIR)


def _is(path: str, kind: Callable[[int], bool]) -> bool | None:
    try:
        return kind(os.stat(path).st_mode)
    except OSError as exc:
        return False if exc.errno in GONE_ERRNOS else None
    except ValueError:  # (a NUL byte in a path that came from elsewhere: no file has it)
        return False


def is_empty(folder: Path) -> bool:
    """Whether a folder has no entries at all (not known empty where it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False
