"""The local directory as a CRM writer: call history per record, tasks, new leads.

Calls and tasks go into their own tables, linked to the record they concern
(a recorded call with its recording's path on the PBX);
a new lead becomes a record with its phone, so the next call from that number
routes to the lead's owner. Entries are checked as a CRM would check them: an
entry with bad data (a NUL byte, over-long text, an owner who is not a user)
is refused on its own, the rest of the batch is written.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Sequence

from ..errors import DirectoryError
from ..records import Owner
from ..writer import ALL_KINDS, CallEntry, Entry, LeadEntry, TaskEntry, WriteKind, WriteResult
from .directory import LocalDirectory
from .importer import MAX_TEXT_LENGTH, ORIGIN_CALL
from .schema import ensure_history_schema

MAX_DESCRIPTION_LENGTH = 4000
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def lead_id(key: str) -> str:
    """The record id of the lead created for call ``key``: found again by it after a crash."""
    return f"L-{key}"


class LocalDirectoryWriter:
    """Writes outcomes into the directory file (on the directory's own thread)."""

    name = "local"
    writes = ALL_KINDS
    max_batch = 100
    search_lag_s = 0.0

    def __init__(self, directory: LocalDirectory):
        self._directory = directory
        self._schema_ready = False

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        return await self._directory.on_thread(self.create_sync, kind, list(entries))

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        return await self._directory.on_thread(self.find_existing_sync, kind, [entry.key for entry in entries])

    async def users(self) -> Sequence[Owner]:
        return await self._directory.on_thread(self.users_sync)

    async def check_access(self) -> None:
        """A file has no credentials to refuse."""

    async def aclose(self) -> None:
        """The directory is closed by its owner (the lookup backend)."""

    # -- on the directory's thread ------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = self._directory.connection
        if not self._schema_ready:
            try:
                ensure_history_schema(conn)
            except sqlite3.Error as exc:
                raise DirectoryError(f"cannot write call history: {exc}") from exc
            self._schema_ready = True
        return conn

    def create_sync(self, kind: WriteKind, entries: list[Entry]) -> list[WriteResult]:
        conn = self._conn()
        results = []
        try:
            with conn:
                for entry in entries:
                    problem = _problem(conn, entry)
                    if problem:
                        results.append(WriteResult(entry.key, error=problem))
                    else:
                        results.append(WriteResult(entry.key, record_id=_insert(conn, entry)))
        except sqlite3.Error as exc:
            raise DirectoryError(f"cannot write {kind.value}: {exc}") from exc
        return results

    def find_existing_sync(self, kind: WriteKind, keys: list[str]) -> dict[str, str]:
        conn = self._conn()
        found: dict[str, str] = {}
        try:
            for key in keys:
                if kind is WriteKind.LEAD:
                    row = conn.execute("SELECT id FROM records WHERE module = 'Leads' AND id = ?", (lead_id(key),)).fetchone()
                else:
                    row = conn.execute(f"SELECT id FROM {_table(kind)} WHERE key = ?", (key,)).fetchone()
                if row:
                    found[key] = str(row[0])
        except sqlite3.Error as exc:
            raise DirectoryError(f"cannot search {kind.value}: {exc}") from exc
        return found

    def users_sync(self) -> list[Owner]:
        rows = self._directory.connection.execute("SELECT id, name, email, extensions FROM users").fetchall()
        return [Owner(uid, name or "", email or "", tuple((extensions or "").split())) for uid, name, email, extensions in rows]

    def calls_for(self, module: str, record_id: str) -> list[dict[str, object]]:
        """The call history of one record, newest first (for the CLI and tests)."""
        conn = self._conn()
        cursor = conn.execute(
            "SELECT * FROM calls WHERE module = ? AND record_id = ? ORDER BY started_at DESC, id DESC", (module, record_id)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def _table(kind: WriteKind) -> str:
    return {WriteKind.CALL: "calls", WriteKind.TASK: "tasks"}[kind]


def _problem(conn: sqlite3.Connection, entry: Entry) -> str:
    """Why the directory refuses ``entry`` (as a CRM answers INVALID_DATA), or empty."""
    texts = [("key", entry.key, 200), ("description", entry.description, MAX_DESCRIPTION_LENGTH)]
    if isinstance(entry, LeadEntry):
        texts.append(("name", entry.name, MAX_TEXT_LENGTH))
        if not _E164.fullmatch(entry.phone):
            return f"phone {entry.phone[:40]!r} is not an E.164 number"
    else:
        texts.append(("subject", entry.subject, MAX_TEXT_LENGTH))
    for what, value, limit in texts:
        if "\x00" in value:
            return f"{what} contains a NUL byte"
        if len(value) > limit:
            return f"{what} is longer than {limit} characters"
    if not entry.key:
        return "key is empty"
    if entry.owner_id and conn.execute("SELECT 1 FROM users WHERE id = ?", (entry.owner_id,)).fetchone() is None:
        return f"owner {entry.owner_id[:40]!r} is not a user of the directory"
    return ""


def _insert(conn: sqlite3.Connection, entry: Entry) -> str:
    """Write one entry; an entry already written (same key) keeps its first row."""
    if isinstance(entry, LeadEntry):
        record_id = lead_id(entry.key)
        conn.execute(
            "INSERT OR IGNORE INTO records (module, id, name, owner_id, is_open, origin) VALUES ('Leads', ?, ?, ?, 1, ?)",
            (record_id, entry.name, entry.owner_id or None, ORIGIN_CALL),
        )
        conn.execute("INSERT OR IGNORE INTO phones (e164, module, record_id, raw) VALUES (?, 'Leads', ?, ?)", (entry.phone, record_id, entry.phone))
        return record_id
    module, record_id = (entry.record.module, entry.record.record_id) if entry.record else ("", "")
    if isinstance(entry, CallEntry):
        conn.execute(
            "INSERT OR IGNORE INTO calls (key, module, record_id, owner_id, call_type, started_at, duration_s, caller, subject, description, recording) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.key, module, record_id, entry.owner_id, "Inbound" if entry.answered else "Missed",
                entry.start.isoformat(timespec="seconds"), entry.duration_seconds, entry.caller_number, entry.subject, entry.description,
                entry.recording_path,
            ),
        )
        table = "calls"
    else:
        assert isinstance(entry, TaskEntry)
        conn.execute(
            "INSERT OR IGNORE INTO tasks (key, module, record_id, owner_id, subject, description, due_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.key, module, record_id, entry.owner_id, entry.subject, entry.description, entry.due.isoformat(timespec="seconds")),
        )
        table = "tasks"
    return str(conn.execute(f"SELECT id FROM {table} WHERE key = ?", (entry.key,)).fetchone()[0])
