"""The schema, as numbered migrations applied in order and recorded in `PRAGMA user_version`."""

from __future__ import annotations

import logging
import sqlite3

from ..errors import ConfigError
from .db import Database

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        vector BLOB NOT NULL,
        generation INTEGER NOT NULL,
        added_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX images_sha256 ON images(sha256);
    CREATE INDEX images_generation ON images(generation);
    INSERT INTO meta(key, value) VALUES ('generation', '0');
    """,
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        image TEXT NOT NULL,
        refresh INTEGER NOT NULL,
        state TEXT NOT NULL,
        done INTEGER NOT NULL,
        total INTEGER,
        report TEXT NOT NULL,
        error TEXT,
        created REAL NOT NULL,
        started REAL,
        finished REAL
    );
    CREATE INDEX jobs_created ON jobs(created);
    """,
    # v3: where a downloaded image came from; images of a vanished watched folder kept as
    # `missing` (out of the index, back when the folder returns); the watched folders.
    """
    ALTER TABLE images ADD COLUMN source TEXT;
    ALTER TABLE images ADD COLUMN missing INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX images_path_missing ON images(missing, path);
    CREATE TABLE watches (path TEXT PRIMARY KEY, added REAL NOT NULL);
    """,
    # v4: a job's kind recorded, not guessed (older rows: a path job's label is its absolute
    # path, a URL job's never is); `refresh` named `update` like the job's field.
    """
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'path';
    UPDATE jobs SET kind = CASE WHEN substr(image, 1, 1) = '/' THEN 'path' ELSE 'urls' END;
    ALTER TABLE jobs RENAME COLUMN refresh TO "update";
    """,
    # v5: row counters kept by triggers, so /stats never counts rows; the present ids in order
    # from an index alone (start-up replay never scans the vector pages). (Vectors written
    # from v5 on are float16; older float32 rows stay readable, told apart by their length.)
    """
    CREATE INDEX images_missing_id ON images(missing, id);
    INSERT INTO meta(key, value) SELECT 'present', count(*) FROM images WHERE missing=0;
    INSERT INTO meta(key, value) SELECT 'missing', count(*) FROM images WHERE missing=1;
    CREATE TRIGGER images_counted_insert AFTER INSERT ON images BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) + 1
        WHERE key = CASE NEW.missing WHEN 0 THEN 'present' ELSE 'missing' END;
    END;
    CREATE TRIGGER images_counted_delete AFTER DELETE ON images BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) - 1
        WHERE key = CASE OLD.missing WHEN 0 THEN 'present' ELSE 'missing' END;
    END;
    CREATE TRIGGER images_counted_missing AFTER UPDATE OF missing ON images
    WHEN OLD.missing <> NEW.missing BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) + (1 - 2 * NEW.missing)
        WHERE key = 'present';
        UPDATE meta SET value = CAST(value AS INTEGER) - (1 - 2 * NEW.missing)
        WHERE key = 'missing';
    END;
    """,
    # v6: metadata per image (a flat JSON object), one row per key; `value` is the text that
    # where=KEY:VALUE filters match, `json` the typed value.
    """
    CREATE TABLE image_metadata (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (image_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX image_metadata_key_value ON image_metadata(key, value, image_id);
    """,
    # v7: the insert trigger cost 22 us a row (a statement per row, more than the insert
    # itself): `Images.upsert`, the only insert, adds its new rows to 'present' once a batch.
    # Deletes and missing flips kept their triggers (one row at a time; deletes to v9, flips
    # to v10).
    """
    DROP TRIGGER images_counted_insert;
    """,
    # v8: the ids taken out of the library (deleted, or marked missing), stamped with the
    # generation of the write that did it, so start-up finds what left since the saved index
    # was made without reading every present id. Every write that deletes bumps the generation
    # first. `deletions_from`: the generation from which the log is complete.
    """
    CREATE TABLE deletions (
        generation INTEGER NOT NULL,
        id INTEGER NOT NULL,
        PRIMARY KEY (generation, id)
    ) WITHOUT ROWID;
    CREATE TRIGGER images_logged_delete AFTER DELETE ON images BEGIN
        INSERT OR IGNORE INTO deletions(generation, id)
        VALUES ((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), OLD.id);
    END;
    CREATE TRIGGER images_logged_missing AFTER UPDATE OF missing ON images
    WHEN NEW.missing = 1 AND OLD.missing = 0 BEGIN
        INSERT OR IGNORE INTO deletions(generation, id) VALUES (NEW.generation, OLD.id);
    END;
    INSERT INTO meta(key, value) SELECT 'deletions_from', value FROM meta WHERE key = 'generation';
    """,
    # v9: the delete triggers ran a statement a deleted row each (~10 us: 0.1 s of the 0.26 s
    # a 10,000-image folder's DELETE took at 9M): `Images`' deletes, the only ones, log their
    # rows in `deletions` and take them off the counters themselves (`gone.forget`).
    """
    DROP TRIGGER images_counted_delete;
    DROP TRIGGER images_logged_delete;
    """,
    # v10: the same for the flips of `missing` (a vanished watched folder, its return, a
    # re-add or a move of a missing image): with the two triggers a 10,000-row flip at 9M took
    # 1.14x as long (bench/delete_cost.py); `Images`' writes, the only ones that flip, count
    # and log them.
    """
    DROP TRIGGER images_counted_missing;
    DROP TRIGGER images_logged_missing;
    """,
)


def migrate(db: Database) -> None:
    """Bring the schema up to date; refuse a database made by a newer imgsearch."""
    with db.write() as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise ConfigError(
                f"{db.path} has schema version {version}, newer than this imgsearch "
                f"({len(MIGRATIONS)}); upgrade imgsearch"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            log.info("database %s migrated to schema version %d", db.path, number)


def statements(script: str) -> list[str]:
    """The script's statements (a trigger's body holds `;` too: split where SQLite agrees)."""
    found: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending.strip())
            pending = ""
    return found
