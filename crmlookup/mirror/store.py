"""The mirror's file: a local directory (users, records, phones, links) plus what keeping it needs.

The lookup tables are the local directory's own, so a call is answered by
the one lookup implementation (:class:`~crmlookup.local_directory.LocalDirectory`),
a single index seek. Next to them:

* ``record_state``: what the CRM said of each record beyond the lookup
  (when it changed, its status, its raw phones), so a change of settings or
  of the default region is applied to every record without asking the CRM;
* ``mirror_state``: key/value progress (load cursors, watermarks, last refresh);
* ``mirror_credits``: API credits spent per day and purpose.

Writes happen on one connection (the writer's thread); readers use their own
read-only connections. The file is in WAL mode so a lookup never waits for a write.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import DirectoryError
from ..files import create_private_file
from ..local_directory.schema import ensure_schema
from ..phone import InvalidNumber, normalise
from .records import MirrorRecord, MirrorUser, OpenRule

MIRROR_SCHEMA = """
CREATE TABLE IF NOT EXISTS record_state (
    module      TEXT NOT NULL,
    id          TEXT NOT NULL,
    modified_at REAL NOT NULL DEFAULT 0,
    status      TEXT NOT NULL DEFAULT '',
    pipeline    TEXT NOT NULL DEFAULT '',
    converted   INTEGER NOT NULL DEFAULT 0,
    phones      TEXT NOT NULL DEFAULT '[]',  -- JSON list of the raw phones
    seen        INTEGER NOT NULL DEFAULT 0,  -- the last full listing that saw it
    PRIMARY KEY (module, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_state (
    id     TEXT PRIMARY KEY,
    active INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror_credits (
    day     TEXT NOT NULL,    -- UTC date
    purpose TEXT NOT NULL,    -- mirror, lookup, write
    credits INTEGER NOT NULL,
    PRIMARY KEY (day, purpose)
) WITHOUT ROWID;
"""

# Keys of mirror_state.
LOAD_COMPLETE = "load_complete"
LAST_REFRESH_AT = "last_refresh_at"  # wall clock, seconds since the epoch, of the last good pass
LAST_ATTEMPT_AT = "last_attempt_at"
NEXT_REFRESH_AT = "next_refresh_at"
LAST_ERROR = "last_error"
LAST_RECONCILE_AT = "last_reconcile_at"
GENERATION = "generation"  # of the last full listing
REGION = "region"
RULE = "rule_signature"


class MirrorFileError(DirectoryError):
    """The mirror's file cannot be opened or written."""


def utc_day(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).date().isoformat()


def open_writable(path: Path) -> sqlite3.Connection:
    """The mirror file for writing, created (owner-only) with its tables if need be."""
    try:
        create_private_file(path)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses at most the last pass, never the file
        ensure_schema(conn)
        conn.executescript(MIRROR_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise MirrorFileError(f"cannot open the mirror {path}: {exc}") from None
    return conn


def open_readonly(path: Path) -> sqlite3.Connection:
    """The mirror file for reading only; :class:`MirrorFileError` when it is missing or unreadable."""
    if not path.is_file():
        raise MirrorFileError(f"no mirror file at {path} (crmroute serve builds it)")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False, timeout=5)
        conn.execute("SELECT 1 FROM mirror_state LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise MirrorFileError(f"cannot read the mirror {path}: {exc}") from None
    return conn


@dataclass
class ModuleCounts:
    records: int = 0
    open_records: int = 0
    phones: int = 0


@dataclass
class MirrorSnapshot:
    """What ``crmroute mirror status`` shows, read from the file."""

    path: str
    state: dict[str, str] = field(default_factory=dict)
    modules: dict[str, ModuleCounts] = field(default_factory=dict)
    users: int = 0
    active_users: int = 0
    credits_today: dict[str, int] = field(default_factory=dict)

    def number(self, key: str) -> float | None:
        value = self.state.get(key)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class MirrorStore:
    """The mirror's file, as the refresher and the live path write it (one thread at a time)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> MirrorStore:
        return cls(open_writable(path), path)

    # -- progress ---------------------------------------------------------

    def get(self, key: str, default: str = "") -> str:
        row = self.conn.execute("SELECT value FROM mirror_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def get_json(self, key: str) -> dict[str, Any] | None:
        text = self.get(key)
        try:
            value = json.loads(text) if text else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def put(self, values: dict[str, str | None]) -> None:
        """Set (or, for None, remove) several keys in one transaction."""
        with self.conn:
            for key, value in values.items():
                if value is None:
                    self.conn.execute("DELETE FROM mirror_state WHERE key = ?", (key,))
                else:
                    self.conn.execute("INSERT OR REPLACE INTO mirror_state (key, value) VALUES (?, ?)", (key, value))

    def add_credits(self, spent: dict[str, int], at: float | None = None) -> None:
        day = utc_day(at)
        with self.conn:
            for purpose, credits in spent.items():
                if credits:
                    self.conn.execute(
                        "INSERT INTO mirror_credits (day, purpose, credits) VALUES (?, ?, ?) "
                        "ON CONFLICT (day, purpose) DO UPDATE SET credits = credits + excluded.credits",
                        (day, purpose, credits),
                    )
            # A year of days is plenty for an admin's question "what did it cost".
            self.conn.execute("DELETE FROM mirror_credits WHERE day < date(?, '-400 days')", (day,))

    # -- records ----------------------------------------------------------

    def apply(self, records: Sequence[MirrorRecord], rule: OpenRule, region: str, generation: int = 0) -> int:
        """Store ``records`` (newer copies only) in one transaction; the number of records written.

        ``generation``: the full listing in progress, marked on every record it
        saw (written or already current), so the listing's end can tell which
        stored records it did not see.
        """
        conn = self.conn
        written = 0
        with conn:
            for record in records:
                stored = conn.execute(
                    "SELECT modified_at FROM record_state WHERE module = ? AND id = ?", (record.module, record.id)
                ).fetchone()
                if stored is not None and stored[0] > record.modified_at:
                    if generation:
                        conn.execute("UPDATE record_state SET seen = ? WHERE module = ? AND id = ?", (generation, record.module, record.id))
                    continue  # we hold a newer copy (the live path was faster than the listing)
                self._write_record(record, rule, region, generation, seen=stored is not None)
                written += 1
        return written

    def _write_record(self, record: MirrorRecord, rule: OpenRule, region: str, generation: int, *, seen: bool) -> None:
        conn = self.conn
        owner_id = record.owner.id if record.owner else None
        is_open = rule.is_open(record.module, record.status, record.pipeline, record.converted)
        conn.execute(
            "INSERT INTO records (module, id, name, owner_id, is_open) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (module, id) DO UPDATE SET name = excluded.name, owner_id = excluded.owner_id, is_open = excluded.is_open",
            (record.module, record.id, record.name, owner_id, int(is_open)),
        )
        conn.execute(
            "INSERT OR REPLACE INTO record_state (module, id, modified_at, status, pipeline, converted, phones, seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.module, record.id, record.modified_at, record.status, record.pipeline, int(record.converted), json.dumps(record.phones), generation),
        )
        if seen:
            conn.execute("DELETE FROM phones WHERE module = ? AND record_id = ?", (record.module, record.id))
            conn.execute("DELETE FROM links WHERE module = ? AND record_id = ?", (record.module, record.id))
        conn.executemany(
            "INSERT OR IGNORE INTO phones (e164, module, record_id, raw) VALUES (?, ?, ?, ?)",
            [(e164, record.module, record.id, raw) for e164, raw in normalised_phones(record.phones, region)],
        )
        if record.parents:
            conn.executemany(
                "INSERT OR REPLACE INTO links (module, record_id, parent_module, parent_id) VALUES (?, ?, ?, ?)",
                [(record.module, record.id, module, parent_id) for module, parent_id in record.parents],
            )
        if record.owner is not None:
            # Known as the owner of a record: named from it until the users list (which has the
            # last word, and the extensions) says more; a record's lookup may carry less than a full name.
            conn.execute(
                "INSERT INTO users (id, name, email) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "name = CASE WHEN users.name = '' THEN excluded.name ELSE users.name END, "
                "email = CASE WHEN users.email = '' THEN excluded.email ELSE users.email END",
                (record.owner.id, record.owner.name, record.owner.email),
            )

    def delete(self, module: str, ids: Iterable[str]) -> int:
        """Forget records the CRM deleted; how many were held."""
        gone = [(module, record_id) for record_id in ids]
        with self.conn:
            before = self.conn.total_changes
            self.conn.executemany("DELETE FROM records WHERE module = ? AND id = ?", gone)
            removed = self.conn.total_changes - before
            self.conn.executemany("DELETE FROM record_state WHERE module = ? AND id = ?", gone)
            self.conn.executemany("DELETE FROM phones WHERE module = ? AND record_id = ?", gone)
            self.conn.executemany("DELETE FROM links WHERE module = ? AND record_id = ?", gone)
        return removed

    def unseen(self, module: str, generation: int, limit: int) -> list[str]:
        """Records of ``module`` the full listing ``generation`` did not see (at most ``limit``)."""
        rows = self.conn.execute(
            "SELECT id FROM record_state WHERE module = ? AND seen < ? ORDER BY id LIMIT ?", (module, generation, limit)
        ).fetchall()
        return [row[0] for row in rows]

    def apply_users(self, users: Sequence[MirrorUser]) -> None:
        """Store users; an inactive one keeps its name but rings nowhere."""
        with self.conn:
            for user in users:
                extensions = " ".join(user.extensions) if user.active else ""
                self.conn.execute(
                    "INSERT INTO users (id, name, email, extensions) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "name = excluded.name, email = excluded.email, extensions = excluded.extensions",
                    (user.id, user.name, user.email, extensions),
                )
                self.conn.execute("INSERT OR REPLACE INTO user_state (id, active) VALUES (?, ?)", (user.id, int(user.active)))

    # -- settings that change what is stored --------------------------------

    def rejudge(self, rule: OpenRule) -> int:
        """Apply a changed open rule to every lead and deal; how many changed state."""
        signature = rule.signature()
        if self.get(RULE) == signature:
            return 0
        rows = self.conn.execute(
            "SELECT s.module, s.id, s.status, s.pipeline, s.converted, r.is_open FROM record_state s "
            "JOIN records r ON r.module = s.module AND r.id = s.id WHERE s.module IN ('Leads', 'Deals')"
        ).fetchall()
        changes = [
            (int(now), module, record_id)
            for module, record_id, status, pipeline, converted, was in rows
            if (now := rule.is_open(module, status, pipeline, bool(converted))) != bool(was)
        ]
        with self.conn:
            self.conn.executemany("UPDATE records SET is_open = ? WHERE module = ? AND id = ?", changes)
            self.conn.execute("INSERT OR REPLACE INTO mirror_state (key, value) VALUES (?, ?)", (RULE, signature))
        return len(changes)

    def renormalise(self, region: str) -> bool:
        """Normalise every stored phone again when the default region changed; True if it did."""
        if self.get(REGION) == region:
            return False
        rows = self.conn.execute("SELECT module, id, phones FROM record_state").fetchall()
        with self.conn:
            self.conn.execute("DELETE FROM phones")
            for module, record_id, phones in rows:
                self.conn.executemany(
                    "INSERT OR IGNORE INTO phones (e164, module, record_id, raw) VALUES (?, ?, ?, ?)",
                    [(e164, module, record_id, raw) for e164, raw in normalised_phones(tuple(json.loads(phones)), region)],
                )
            self.conn.execute("INSERT OR REPLACE INTO mirror_state (key, value) VALUES (?, ?)", (REGION, region))
        return True

    def close(self) -> None:
        self.conn.close()


def normalised_phones(phones: Sequence[str], region: str) -> list[tuple[str, str]]:
    """``(e164, raw)`` for each phone that is a number; text that is not is left out."""
    found = []
    for raw in phones:
        try:
            found.append((normalise(raw, region).e164, raw))
        except InvalidNumber:
            continue
    return found


def snapshot(conn: sqlite3.Connection, path: str) -> MirrorSnapshot:
    """The state and counts of a mirror file (any connection, read-only is enough)."""
    view = MirrorSnapshot(path=path)
    view.state = dict(conn.execute("SELECT key, value FROM mirror_state").fetchall())
    for module, records, open_records in conn.execute("SELECT module, count(*), sum(is_open) FROM records GROUP BY module"):
        view.modules[module] = ModuleCounts(records, open_records or 0)
    for module, phones in conn.execute("SELECT module, count(*) FROM phones GROUP BY module"):
        view.modules.setdefault(module, ModuleCounts()).phones = phones
    view.users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    view.active_users = conn.execute("SELECT count(*) FROM user_state WHERE active = 1").fetchone()[0]
    view.credits_today = dict(conn.execute("SELECT purpose, credits FROM mirror_credits WHERE day = ?", (utc_day(),)).fetchall())
    return view
