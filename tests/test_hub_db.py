"""The Hub's SQLite schema: created on first open, migrated in order on upgrade, never downgraded."""

from __future__ import annotations

import sqlite3

import pytest

from pvreal.hub import db


def columns(conn, table):
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_new_database_gets_the_current_schema(tmp_path):
    conn = db.connect(tmp_path / "hub.sqlite")
    assert db.version(conn) == db.SCHEMA_VERSION == len(db.MIGRATIONS)
    assert "device_meta" in columns(conn, "devices")


def test_a_v1_database_is_upgraded_keeping_its_rows(tmp_path):
    path = tmp_path / "hub.sqlite"
    old = db.connect(path, migrations=db.MIGRATIONS[:1])  # what the first Hub release wrote
    assert db.version(old) == 1 and "device_meta" not in columns(old, "devices")
    old.execute("INSERT INTO devices (id, nick, secret_hash, created, revision, status) "
                "VALUES ('d1', 'one', 'h', 1.0, 3, 'DONE')")  # fmt: skip
    old.close()

    conn = db.connect(path)
    assert db.version(conn) == db.SCHEMA_VERSION
    row = conn.execute("SELECT * FROM devices").fetchone()
    assert (row["id"], row["revision"], row["status"], row["device_meta"]) == ("d1", 3, "DONE", "{}")
    assert {"outcome_at"} <= columns(conn, "targets") and "visible_at" in columns(conn, "steps")
    conn.close()
    assert db.version(db.connect(path)) == db.SCHEMA_VERSION  # a second open changes nothing


def test_a_failing_migration_leaves_the_previous_version(tmp_path):
    path = tmp_path / "hub.sqlite"
    db.connect(path, migrations=db.MIGRATIONS[:1]).close()
    broken = (*db.MIGRATIONS, "ALTER TABLE devices ADD COLUMN x TEXT; SELECT * FROM no_such_table")
    with pytest.raises(sqlite3.OperationalError):
        db.connect(path, migrations=broken)
    conn = sqlite3.connect(path)
    assert db.version(conn) == len(db.MIGRATIONS)  # v2 applied and kept, the broken v3 not
    assert "x" not in columns(conn, "devices")


def test_a_database_from_a_newer_hub_is_refused(tmp_path):
    path = tmp_path / "hub.sqlite"
    db.connect(path, migrations=(*db.MIGRATIONS, "CREATE TABLE later (x)")).close()
    with pytest.raises(db.SchemaTooNew, match="newer than this Hub"):
        db.connect(path)
