"""The Hub's SQLite database: one file, its schema created on first open and migrated on upgrade.

`schema_version` holds one row, the number of migrations applied. `MIGRATIONS` is append-only:
migration k turns a version k-1 database into version k, and every open applies the missing
ones in order, each in its own transaction with the version bump, so a crash mid-upgrade leaves
the previous version intact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

V1 = """
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    nick TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL,
    revision INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '',
    status_msg TEXT NOT NULL DEFAULT ''
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    device TEXT NOT NULL REFERENCES devices(id),
    expires REAL NOT NULL
);
CREATE TABLE objects (
    sha TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
CREATE TABLE releases (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state_json TEXT NOT NULL,
    state_sha TEXT NOT NULL,
    strategy TEXT NOT NULL,
    options TEXT NOT NULL,
    controller TEXT NOT NULL,
    fleet INTEGER NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    wake_at REAL
);
CREATE TABLE release_objects (
    release TEXT NOT NULL REFERENCES releases(name),
    sha TEXT NOT NULL REFERENCES objects(sha),
    PRIMARY KEY (release, sha)
);
CREATE TABLE targets (
    release TEXT NOT NULL REFERENCES releases(name),
    device TEXT NOT NULL REFERENCES devices(id),
    position INTEGER NOT NULL,
    admitted_at REAL,
    outcome TEXT,
    PRIMARY KEY (release, device)
);
CREATE TABLE steps (
    device TEXT NOT NULL REFERENCES devices(id),
    rev INTEGER NOT NULL,
    release TEXT REFERENCES releases(name),
    state_json TEXT NOT NULL,
    state_sha TEXT NOT NULL,
    progress TEXT NOT NULL,
    status TEXT NOT NULL,
    step_time REAL NOT NULL,
    progress_time REAL,
    PRIMARY KEY (device, rev)
);
"""

# v2: device metadata (Pantahub's device-meta), when a device answered (the adoption plot), and
# when a delayed admission becomes visible to its device.
V2 = """
ALTER TABLE devices ADD COLUMN device_meta TEXT NOT NULL DEFAULT '{}';
ALTER TABLE targets ADD COLUMN outcome_at REAL;
ALTER TABLE steps ADD COLUMN visible_at REAL NOT NULL DEFAULT 0;
"""

# v3: the silent-device rule (when a device took its step, whether it was counted failed for its
# silence) and every progress status the Hub heard, in order (the validation timeline).
V3 = """
ALTER TABLE targets ADD COLUMN taken_at REAL;
ALTER TABLE targets ADD COLUMN timed_out INTEGER NOT NULL DEFAULT 0;
CREATE TABLE progress_log (
    device TEXT NOT NULL REFERENCES devices(id),
    rev INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_msg TEXT NOT NULL,
    at REAL NOT NULL
);
"""

MIGRATIONS: Sequence[str] = (V1, V2, V3)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The file was written by a newer Hub; opening it would lose what this one cannot read."""


def connect(path: str | Path, *, migrations: Sequence[str] = MIGRATIONS) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database; rows come back as `sqlite3.Row`."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    migrate(conn, migrations)
    return conn


def version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    current = version(conn)
    if current > len(migrations):
        raise SchemaTooNew(f"database schema v{current} is newer than this Hub's v{len(migrations)}")
    for number in range(current + 1, len(migrations) + 1):
        statements = [s for s in migrations[number - 1].split(";") if s.strip()]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(migrations)
