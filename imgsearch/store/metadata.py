"""The `image_metadata` table: a flat JSON object per image, one row per key.

Each value is kept twice: as JSON (its type, for answers) and as text (`match_text`, for
`where=KEY:VALUE` filters through the (key, value) index). Rows go with their image
(ON DELETE CASCADE) and stay with it across moves, which keep the image's id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .db import Database, chunked, tree

Value = str | int | float | bool
Metadata = dict[str, Value]


def match_text(value: Value) -> str:
    """The text a filter value is compared with: `true`/`false`, `12`, `1.5`, or the string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class MetadataTable:
    """Per-image metadata: read many, replace one image's object, find ids by key/value."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, ids: Sequence[int]) -> dict[int, Metadata]:
        """Each id's metadata object; ids without metadata are left out."""
        found: dict[int, Metadata] = {}
        for chunk, marks in chunked([int(i) for i in ids]):
            query = (
                f"SELECT image_id, key, json FROM image_metadata WHERE image_id IN ({marks})"
                " ORDER BY image_id, key"
            )
            for image_id, key, raw in self.db.reader().execute(query, chunk):
                found.setdefault(int(image_id), {})[key] = json.loads(raw)
        return found

    def replace(self, objects: Mapping[int, Metadata]) -> None:
        """Replace the metadata of these images (an empty object clears it), in one transaction.
        Ids no longer stored are skipped."""
        with self.db.write() as conn:
            for image_id, obj in objects.items():
                conn.execute("DELETE FROM image_metadata WHERE image_id=?", (int(image_id),))
                if not obj:
                    continue
                if conn.execute("SELECT 1 FROM images WHERE id=?", (int(image_id),)).fetchone():
                    conn.executemany(
                        "INSERT INTO image_metadata(image_id, key, value, json) VALUES (?,?,?,?)",
                        [(int(image_id), k, match_text(v), json.dumps(v)) for k, v in obj.items()],
                    )

    def matching(self, conditions: Mapping[str, Sequence[str]]) -> np.ndarray:
        """Sorted ids whose metadata has, for every key, one of its values (AND across keys,
        OR within a key); an unknown key matches nothing."""
        if not conditions:
            raise ValueError("no conditions")
        parts, args = [], []
        for key, values in conditions.items():
            marks = ",".join("?" * len(values))
            parts.append(f"SELECT image_id FROM image_metadata WHERE key=? AND value IN ({marks})")
            args += [key, *values]
        query = " INTERSECT ".join(parts) + " ORDER BY 1"
        rows = self.db.reader().execute(query, args).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def ids_by_source(self, urls: Sequence[str]) -> dict[str, list[int]]:
        """Ids of the images downloaded from each URL."""
        found: dict[str, list[int]] = {}
        for chunk, marks in chunked(list(urls)):
            query = f"SELECT source, id FROM images WHERE source IN ({marks}) ORDER BY id"
            for source, image_id in self.db.reader().execute(query, chunk):
                found.setdefault(source, []).append(int(image_id))
        return found

    def record(self, path: str) -> dict[str, Any] | None:
        """One stored image's facts and metadata, by path (None when it is not stored)."""
        row = (
            self.db.reader()
            .execute(
                "SELECT id, path, size, width, height, sha256, mtime_ns, added_at, updated_at,"
                " source, missing FROM images WHERE path=?",
                (path,),
            )
            .fetchone()
        )
        if row is None:
            return None
        keys = ("id", "path", "size", "width", "height", "sha256", "mtime_ns", "added")
        out: dict[str, Any] = dict(zip(keys, row[:8], strict=True))
        out.update(updated=row[8], source=row[9], missing=bool(row[10]))
        out["metadata"] = self.get([row[0]]).get(row[0], {})
        return out

    def ids_under(self, folders: Sequence[str]) -> np.ndarray:
        """Sorted ids of the present images at or below any of `folders` (ranges on the
        (missing, path) index)."""
        parts: list[str] = []
        args: list[str] = []
        for folder in folders:
            where, values = tree(folder)
            parts.append(f"SELECT id FROM images WHERE missing=0 AND {where}")
            args += values
        rows = self.db.reader().execute(" UNION ".join(parts) + " ORDER BY 1", args).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
