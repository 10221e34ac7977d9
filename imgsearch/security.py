"""What callers may touch: the allowed roots, system folders never opened, and the API token."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from .config import AUTO_TOKEN, Config
from .errors import BadRequest, ConfigError, Forbidden, NotFound

log = logging.getLogger(__name__)

# Never opened, whatever the roots: reading them could leak secrets or hang.
SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))
# What refused paths are told, the same wherever they point.
OUTSIDE = "outside the folders this daemon may read"
TOKEN_FILE = "token"
# Linux's limits (limits.h), which every local file system there keeps to.
NAME_MAX = 255
PATH_MAX = 4096


class PathPolicy:
    """Turns a caller's path into an absolute resolved one, or refuses it.

    Outside the allowed roots every path gets the same 403 and the same message, whether it
    exists, is missing or is unreadable, so a caller learns nothing about the file system there.
    """

    def __init__(self, roots: Sequence[Path] = ()) -> None:
        self.roots = tuple(root.resolve() for root in roots)
        # allows_text's prefixes: a bulk import checks 20,000 rows a batch at ~20,000 rows/s,
        # where a Path per row (~5 us) would cost a tenth of a second per batch.
        self._system_text = _texts(SYSTEM_DIRS)
        self._root_text = _texts(self.roots)

    def resolve(self, raw: str | None, name: str = "image") -> Path:
        if raw is None or not raw.strip():
            raise BadRequest(f"missing parameter: {name}")
        if "\x00" in raw:
            raise BadRequest(f"invalid {name}: contains a NUL byte")
        check_nameable(raw, name)
        try:
            path = Path(raw).expanduser()
        except RuntimeError:  # '~someone' with no such user
            raise BadRequest(f"{name}: cannot expand '~' in {raw!r}") from None
        if not path.is_absolute():
            raise BadRequest(f"{name} must be an absolute path, got {raw!r}")
        outside = Forbidden(f"{name} is outside the folders this daemon may read: {raw}")
        try:
            resolved = path.resolve()  # symlinks and '..' are followed before any check
        except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
            if not self.allows(Path(os.path.normpath(path))):
                raise outside from None
            raise NotFound(f"cannot resolve {name} (a symlink loop?): {raw}") from None
        if not self.allows(resolved):
            raise outside
        return resolved

    def allows(self, resolved: Path) -> bool:
        """Whether an already-resolved path may be read."""
        if any(_within(resolved, system) for system in SYSTEM_DIRS):
            return False
        return not self.roots or any(_within(resolved, root) for root in self.roots)

    def allows_text(self, path: str) -> bool:
        """allows() for a normalised absolute path as text (`/a/b`, no `.`, `..` or `//`),
        by string prefixes alone; its symlinks are not followed (the readers check again)."""
        if path in self._system_text[0] or path.startswith(self._system_text[1]):
            return False
        roots, under = self._root_text
        return not self.roots or path in roots or path.startswith(under)


def check_nameable(raw: str, name: str) -> None:
    """400 for what no file system here can name: a component over NAME_MAX bytes, a path over
    PATH_MAX, a lone surrogate (no bytes at all). Else os calls raise ENAMETOOLONG (from
    Path.exists() too, on Python 3.11), far from here and as a 500."""
    try:
        encoded = os.fsencode(raw)
    except UnicodeEncodeError:
        raise BadRequest(f"invalid {name}: not Unicode text (a lone surrogate)") from None
    if len(encoded) > PATH_MAX:
        raise BadRequest(f"{name} is {len(encoded)} bytes long; a path has at most {PATH_MAX}")
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise BadRequest(
            f"{name} holds a file or folder name of {len(longest)} bytes; at most {NAME_MAX}"
        )


def _texts(folders: Sequence[Path]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The folders as text, and the prefixes of what lies under them ('/' is every path's)."""
    texts = [str(folder) for folder in folders]
    return frozenset(texts), tuple(t.rstrip("/") + "/" for t in texts)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def with_token(config: Config) -> Config:
    """Replace `--token auto` by the token kept in the data dir (made on first use, mode 0600)."""
    if config.token != AUTO_TOKEN:
        return config
    path = config.data_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:  # the data dir is a file, or the token is unreadable
        raise _unwritable(config.data_dir, exc) from None
    try:
        if not token:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            token = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            log.info("generated an API token in %s", path)
        os.chmod(path, 0o600)
    except OSError as exc:  # read-only: said as the data-dir lock says it (service.py)
        raise _unwritable(config.data_dir, exc) from None
    return dataclasses.replace(config, token=token)


def _unwritable(data_dir: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"the data directory {data_dir} cannot be written ({exc.strerror}): imgsearch "
        "keeps its database and index there; pass a writable --data-dir"
    )
