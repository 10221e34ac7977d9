"""Ingest: one core (core.py) that every source feeds with a list of files or embedded rows.

Producers: folders.py (a file or a folder walk), `downloads.py` (URLs, downloaded first),
`watch.py` (watched folders' change sets); an import of embedded rows calls
`Ingester.add_embedded`. report.py holds the per-item report they all fill.
"""

from .checks import Checked
from .core import Ingester, Prepared, ProgressHook
from .folders import Listing, files_to_add, nameable, walk
from .report import AddReport, FileError

__all__ = [
    "AddReport",
    "Checked",
    "FileError",
    "Ingester",
    "Listing",
    "Prepared",
    "ProgressHook",
    "files_to_add",
    "nameable",
    "walk",
]
