"""The local directory's SQLite schema: users, records and their phone numbers."""

import sqlite3

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL DEFAULT '',
    email      TEXT NOT NULL DEFAULT '',
    extensions TEXT NOT NULL DEFAULT ''   -- space-separated
);
CREATE TABLE IF NOT EXISTS records (
    module   TEXT NOT NULL,               -- Leads, Deals, Contacts, Accounts
    id       TEXT NOT NULL,
    name     TEXT NOT NULL DEFAULT '',
    owner_id TEXT,
    is_open  INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (module, id)
);
-- Keyed on the E.164 form so a lookup is one index seek; the raw text is kept
-- so an admin can see what was imported.
CREATE TABLE IF NOT EXISTS phones (
    e164      TEXT NOT NULL,
    module    TEXT NOT NULL,
    record_id TEXT NOT NULL,
    raw       TEXT NOT NULL,
    PRIMARY KEY (e164, module, record_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS phones_by_record ON phones (module, record_id);
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if they are missing (idempotent)."""
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def is_directory(conn: sqlite3.Connection) -> bool:
    """True when the file holds our tables."""
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {"users", "records", "phones"} <= names
