"""What an add did, item by item: the report every producer fills and the job shows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImgSearchError


@dataclass(frozen=True)
class FileError:
    """An item that could not be indexed; `status` is the HTTP status it would have alone."""

    image: str
    error: str
    status: int = 422


# The failed items an add keeps, with why (`failed` counts them all): a folder of 300,000
# broken files made a 32 MB report, rebuilt for every look at the job and written to SQLite
# every few seconds while the job ran.
ERRORS_KEPT = 1_000


@dataclass
class AddReport:
    """What one add did; `errors` lists the items that could not be indexed, and why (the
    first ERRORS_KEPT; `failed` counts them all)."""

    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[FileError] = field(default_factory=list)
    moved: int = 0  # new paths of stored images whose old path is gone (row and vector kept)
    restored: int = 0  # unchanged files of a returned folder, searchable again (not in JSON)

    def fail(self, error: FileError) -> None:
        self.failed += 1
        self.note(error)

    def note(self, error: FileError) -> None:
        """List an error (while fewer than ERRORS_KEPT are) without counting a failure."""
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(error)

    def merge(self, other: AddReport, names: Mapping[str, str] | None = None) -> None:
        """Add `other`'s counts and errors to this report; `names` renames items in errors
        (e.g. a downloaded file to the URL it came from)."""
        names = names or {}
        self.added += other.added
        self.updated += other.updated
        self.skipped += other.skipped
        self.moved += other.moved
        self.restored += other.restored
        for error in other.errors:
            self.note(FileError(names.get(error.image, error.image), error.error, error.status))
        self.failed += other.failed  # (its errors listed are ERRORS_KEPT at most)

    def raise_single(self) -> None:
        """The rule for an add of one item: its failure is the add's failure."""
        if self.errors:
            error = self.errors[0]
            raise ImgSearchError(f"{error.image}: {error.error}", error.status)

    def as_json(self, errors: int = ERRORS_KEPT) -> dict[str, Any]:
        """The counts, and the first `errors` errors."""
        return {
            "added": self.added,
            "updated": self.updated + self.moved,  # a move updates the row's path
            "skipped": self.skipped,
            "failed": self.failed,
            "errors": [
                {"image": e.image, "error": e.error, "status": e.status}
                for e in self.errors[:errors]
            ],
        }
