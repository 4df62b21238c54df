"""The local directory's SQLite schema: users, records and their phone numbers."""

import sqlite3

SCHEMA_VERSION = 2

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
    origin   TEXT NOT NULL DEFAULT 'import',  -- import, or call: a lead crmroute created for an unknown caller
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
-- A record reached through another one's phones: a Zoho deal has no phone of
-- its own and matches a caller through its contact or its account.
CREATE TABLE IF NOT EXISTS links (
    module        TEXT NOT NULL,
    record_id     TEXT NOT NULL,
    parent_module TEXT NOT NULL,
    parent_id     TEXT NOT NULL,
    PRIMARY KEY (module, record_id, parent_module)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_parent ON links (parent_module, parent_id);
"""

# Call history: what the delivery worker writes back, as a CRM keeps activities on
# a record. ``key`` is the call's unique id, so a retried write finds its row.
HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    module      TEXT NOT NULL DEFAULT '',
    record_id   TEXT NOT NULL DEFAULT '',
    owner_id    TEXT NOT NULL DEFAULT '',
    call_type   TEXT NOT NULL,            -- Inbound, Missed
    started_at  TEXT NOT NULL,            -- ISO 8601 with offset
    duration_s  INTEGER NOT NULL,
    caller      TEXT NOT NULL DEFAULT '',
    subject     TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    recording   TEXT NOT NULL DEFAULT ''   -- the recording's file on the PBX, when the call was recorded
);
CREATE INDEX IF NOT EXISTS calls_by_record ON calls (module, record_id);
CREATE TABLE IF NOT EXISTS tasks (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    module      TEXT NOT NULL DEFAULT '',
    record_id   TEXT NOT NULL DEFAULT '',
    owner_id    TEXT NOT NULL DEFAULT '',
    subject     TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    due_at      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'open'
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner_id, status);
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if they are missing, and bring an older file up to date (idempotent)."""
    conn.executescript(SCHEMA)
    ensure_history_schema(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def ensure_history_schema(conn: sqlite3.Connection) -> None:
    """Add the call-history tables, and the records' origin, to a directory made before they existed (idempotent)."""
    conn.executescript(HISTORY_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
    if "origin" not in columns:
        # A directory from before: everything in it came from an import.
        conn.execute("ALTER TABLE records ADD COLUMN origin TEXT NOT NULL DEFAULT 'import'")
        conn.commit()
    if "recording" not in {row[1] for row in conn.execute("PRAGMA table_info(calls)")}:
        conn.execute("ALTER TABLE calls ADD COLUMN recording TEXT NOT NULL DEFAULT ''")
        conn.commit()


def is_directory(conn: sqlite3.Connection) -> bool:
    """True when the file holds our tables."""
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {"users", "records", "phones"} <= names


def has_links(conn: sqlite3.Connection) -> bool:
    """True when the file has the ``links`` table (a directory made before it existed has not)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'links'").fetchone() is not None
