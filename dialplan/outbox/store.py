"""The outbox: every call outcome, durable the moment it is recorded.

One SQLite file in WAL mode. An outcome is committed (``synchronous=FULL``)
before the AGI session that recorded it ends, so nothing is lost when the
process is killed. Each outcome moves through explicit states::

    pending ──claim──► in_flight ──► done
       ▲                   │
       │                   ├──► failed ──(next attempt due)──► in_flight ...
       └── retry/replay ◄──┴──► dead      (the CRM refused its data too often)

Each CRM record an outcome needs (lead, call, task) is tracked in ``writes``:
``sent`` before the request goes out, ``done`` with the CRM's id once it
answers. A ``sent`` row found later means an attempt whose result we never
saw: the worker searches for the record before creating it again.

All methods are synchronous and use one connection; in the server they run on
the outbox's own thread (:meth:`Outbox.on_thread`), so the event loop never waits
on the disk.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable, ParamSpec, Sequence, TypeVar

from crmlookup.files import create_private_file
from crmlookup.sqlite_thread import ConnectionThread


from ..outcome import CallOutcome
from .errors import OutboxError as OutboxError  # raised by every store; importable from here as before
from .group_commit import GroupCommit

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id              INTEGER PRIMARY KEY,
    call_id         TEXT NOT NULL UNIQUE,
    recorded_at     REAL NOT NULL,
    ended_at        REAL NOT NULL,
    caller_e164     TEXT NOT NULL DEFAULT '',
    answered        INTEGER NOT NULL,
    answered_extension TEXT NOT NULL DEFAULT '',
    payload         TEXT NOT NULL,              -- the CallOutcome, JSON
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'done', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    rejections      INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL NOT NULL,
    lease_until     REAL NOT NULL DEFAULT 0,
    lease_token     TEXT NOT NULL DEFAULT '',
    context         TEXT NOT NULL DEFAULT '',   -- what the CRM said about the caller, JSON, once asked
    done_at         REAL
);
CREATE INDEX IF NOT EXISTS outcomes_due ON outcomes (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outcomes_by_caller ON outcomes (caller_e164, ended_at);
CREATE TABLE IF NOT EXISTS writes (
    outcome_id  INTEGER NOT NULL REFERENCES outcomes (id) ON DELETE CASCADE,
    step        TEXT NOT NULL,                  -- lead, call, task
    state       TEXT NOT NULL CHECK (state IN ('sent', 'done', 'rejected')),
    crm_id      TEXT NOT NULL DEFAULT '',
    error       TEXT NOT NULL DEFAULT '',
    updated_at  REAL NOT NULL,
    PRIMARY KEY (outcome_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

MAX_ERROR_LENGTH = 1000

# The lead write of another outcome of one caller (parameters: caller, this
# outcome's id), done or under way, that still counts: done (the lead is in the
# CRM, even when a later step of its outcome died: a recording that never came),
# or under way for an outcome that is not dead.
_OTHER_LEAD_OF_CALLER = (
    "FROM writes w JOIN outcomes o ON o.id = w.outcome_id "
    "WHERE o.caller_e164 = ? AND o.id != ? AND w.step = 'lead' "
    "AND (w.state = 'done' OR (w.state = 'sent' AND o.state != 'dead'))"
)


class OutboxState(str, enum.Enum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class WriteState(str, enum.Enum):
    SENT = "sent"  # the request went out (or was about to): the result is unknown
    DONE = "done"
    REJECTED = "rejected"


@dataclass(frozen=True)
class WriteRow:
    """One CRM record an outcome needs, as far as we know."""

    step: str
    state: WriteState
    crm_id: str = ""
    error: str = ""
    updated_at: float = 0.0


@dataclass
class OutboxItem:
    """A claimed outcome, with everything the worker needs to deliver it."""

    id: int
    outcome: CallOutcome
    attempts: int
    rejections: int
    lease_token: str
    context: dict[str, Any] | None = None
    writes: dict[str, WriteRow] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxRow:
    """An outcome as ``crmroute outbox list`` shows it."""

    id: int
    call_id: str
    state: str
    caller: str
    answered: bool
    recorded_at: float
    attempts: int
    rejections: int
    next_attempt_at: float
    last_error: str


@dataclass(frozen=True)
class Finish:
    """How one claimed outcome's attempt ended."""

    id: int
    lease_token: str
    state: OutboxState
    error: str = ""
    next_attempt_at: float = 0.0
    # False for an attempt that never reached the CRM's judgement (paused queue).
    counted: bool = True
    rejected: bool = False


class Outbox:
    """The outbox file. Open with :meth:`open`; close with :meth:`close` / :meth:`aclose`."""

    remote = False  # a local file: a failing commit fails at once

    def __init__(self, conn: sqlite3.Connection, path: str):
        self._conn = conn
        self.path = path
        self._thread = ConnectionThread(conn, "outbox")
        # Outcomes waiting to be committed together (group commit): see record().
        # record_many looked up at each commit: a store wrapped after opening is still the one used.
        self._group = GroupCommit(lambda batch: self.record_many(batch), self._thread.submit)

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> Outbox:
        """Open (or, with ``create``, create: mode 0600, a new folder 0700) the outbox at ``path``;
        raises :class:`OutboxError`.

        The admin's commands open it with ``create=False``: one looking at the
        wrong file must say so, not show a new empty outbox.
        """
        path = Path(path)
        if not create and not path.is_file():
            raise OutboxError(f"no outbox at {path}")
        try:
            create_private_file(path)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # Durable at commit, power loss included: an outcome acknowledged is an outcome kept.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if names and not {"outcomes", "writes"} <= names:
                raise OutboxError(f"{path} is not a crmroute outbox (it has other tables)")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            conn.close()
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        except OutboxError:
            conn.close()
            raise
        return cls(conn, str(path))

    # -- threads ------------------------------------------------------------

    async def on_thread(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` on the outbox's own thread (the only one using its connection), awaited."""
        return await self._thread.call(function, *args, **kwargs)

    def close(self) -> None:
        self._thread.close()

    async def aclose(self) -> None:
        await self._thread.aclose()

    # -- recording ----------------------------------------------------------

    async def record(self, outcome: CallOutcome, now: float) -> bool:
        """Commit ``outcome``; True if new, False if this call was already recorded.

        Outcomes recorded at the same moment share one transaction (group
        commit): each caller still returns only once its outcome is on disk.
        """
        return await self._group.record(outcome, now)

    def record_many(self, outcomes: Sequence[tuple[CallOutcome, float]]) -> list[bool]:
        """Insert outcomes in one transaction; True for each one new (idempotent on the call id)."""
        new = []
        with self._transaction():
            for outcome, now in outcomes:
                cursor = self._conn.execute(
                    "INSERT INTO outcomes (call_id, recorded_at, ended_at, caller_e164, answered, answered_extension, payload, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id) DO NOTHING",
                    (
                        outcome.call_id, now, outcome.ended_at, outcome.caller_e164, int(outcome.answered),
                        outcome.answered_extension, json.dumps(outcome.to_dict(), ensure_ascii=False), now,
                    ),
                )
                new.append(cursor.rowcount == 1)
        return new

    # -- the worker's side ----------------------------------------------------

    def claim(self, now: float, limit: int, lease_s: float) -> list[OutboxItem]:
        """Take up to ``limit`` due outcomes for one attempt (pending, failed and due, or abandoned in flight)."""
        token = new_lease_token()
        with self._transaction():
            rows = self._conn.execute(
                "SELECT id, payload, attempts, rejections, context FROM outcomes "
                "WHERE (state IN ('pending', 'failed') AND next_attempt_at <= :now) "
                "   OR (state = 'in_flight' AND lease_until <= :now) "
                "ORDER BY next_attempt_at, id LIMIT :limit",
                {"now": now, "limit": limit},
            ).fetchall()
            self._conn.executemany(
                "UPDATE outcomes SET state = 'in_flight', lease_until = ?, lease_token = ? WHERE id = ?",
                [(now + lease_s, token, row[0]) for row in rows],
            )
        items = [item_of_row(row, token) for row in rows]
        writes = self.writes_for([item.id for item in items])
        for item in items:
            item.writes = writes.get(item.id, {})
        return items

    def writes_for(self, ids: Sequence[int]) -> dict[int, dict[str, WriteRow]]:
        out: dict[int, dict[str, WriteRow]] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for outcome_id, step, state, crm_id, error, updated_at in self._conn.execute(
                f"SELECT outcome_id, step, state, crm_id, error, updated_at FROM writes WHERE outcome_id IN ({marks})", chunk
            ):
                out.setdefault(outcome_id, {})[step] = WriteRow(step, WriteState(state), crm_id, error, updated_at)
        return out

    def save_contexts(self, contexts: Sequence[tuple[int, dict[str, Any] | None]]) -> None:
        """Keep what the CRM said about each outcome's caller (None forgets it)."""
        with self._transaction():
            self._conn.executemany(
                "UPDATE outcomes SET context = ? WHERE id = ?",
                [(json.dumps(context, ensure_ascii=False) if context is not None else "", oid) for oid, context in contexts],
            )

    def lead_for_caller(self, caller_e164: str, exclude_id: int) -> tuple[WriteState, str, str] | None:
        """A lead another live outcome created (or is creating) for this caller: (state, lead id, owner id)."""
        row = self._conn.execute(
            f"SELECT w.state, w.crm_id, o.context {_OTHER_LEAD_OF_CALLER} ORDER BY w.state = 'done' DESC, o.id LIMIT 1",
            (caller_e164, exclude_id),
        ).fetchone()
        if row is None:
            return None
        return lead_of_row(row)

    def claim_leads(self, leads: Sequence[tuple[int, str]], now: float) -> set[int]:
        """Mark the lead of each ``(outcome_id, caller_e164)`` as being sent, unless
        another live outcome already created (or is creating) one for that caller;
        returns the ids refused.

        The check and the mark are one transaction, so two workers on one
        outbox (``serve`` and ``crmroute outbox flush``) can never both create
        a lead for the same caller.
        """
        refused = set()
        with self._transaction():
            for outcome_id, caller in leads:
                if caller and self._conn.execute(f"SELECT 1 {_OTHER_LEAD_OF_CALLER} LIMIT 1", (caller, outcome_id)).fetchone():
                    refused.add(outcome_id)
                    continue
                self._conn.execute(
                    "INSERT INTO writes (outcome_id, step, state, crm_id, error, updated_at) VALUES (?, 'lead', 'sent', '', '', ?) "
                    "ON CONFLICT (outcome_id, step) DO UPDATE SET state = 'sent', crm_id = '', error = '', updated_at = excluded.updated_at",
                    (outcome_id, now),
                )
        return refused

    def release_orphans(self, now: float) -> int:
        """Make outcomes claimed by a process of this machine that no longer runs due at once.

        Their lease would run out anyway; this saves the wait after a restart.
        """
        tokens = [row[0] for row in self._conn.execute("SELECT DISTINCT lease_token FROM outcomes WHERE state = 'in_flight' AND lease_until > ?", (now,))]
        orphans = [token for token in tokens if _holder_is_gone(token)]
        if not orphans:
            return 0
        with self._transaction():
            return sum(
                self._conn.execute("UPDATE outcomes SET lease_until = 0 WHERE state = 'in_flight' AND lease_token = ?", (token,)).rowcount
                for token in orphans
            )

    def mark_writes(self, rows: Iterable[tuple[int, str, WriteState, str, str]], now: float) -> None:
        """Record ``(outcome_id, step, state, crm_id, error)`` for several writes at once."""
        with self._transaction():
            self._conn.executemany(
                "INSERT INTO writes (outcome_id, step, state, crm_id, error, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (outcome_id, step) DO UPDATE SET state = excluded.state, crm_id = excluded.crm_id, "
                "error = excluded.error, updated_at = excluded.updated_at",
                [(oid, step, state.value, crm_id, error[:MAX_ERROR_LENGTH], now) for oid, step, state, crm_id, error in rows],
            )

    def unmark_sent(self, writes: Iterable[tuple[int, str]]) -> None:
        """Drop the ``sent`` mark of ``(outcome_id, step)`` writes known not to have been made."""
        with self._transaction():
            self._conn.executemany("DELETE FROM writes WHERE outcome_id = ? AND step = ? AND state = 'sent'", list(writes))

    def finish(self, finishes: Sequence[Finish], now: float) -> None:
        """End the attempts of claimed outcomes (only those still holding our lease)."""
        with self._transaction():
            for f in finishes:
                self._conn.execute(
                    "UPDATE outcomes SET state = ?, last_error = ?, next_attempt_at = ?, lease_until = 0, lease_token = '', "
                    "attempts = attempts + ?, rejections = rejections + ?, "
                    "done_at = CASE WHEN ? = 'done' THEN ? ELSE done_at END "
                    "WHERE id = ? AND state = 'in_flight' AND lease_token = ?",
                    (
                        f.state.value, f.error[:MAX_ERROR_LENGTH], f.next_attempt_at or now,
                        int(f.counted), int(f.rejected), f.state.value, now, f.id, f.lease_token,
                    ),
                )

    # -- the queue's pause (shared with other processes through the file) -------

    def set_meta(self, key: str, value: str | None) -> None:
        with self._transaction():
            if value is None:
                self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- the admin's side ---------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Outcomes per state (every state listed, zero included)."""
        counts = {state.value: 0 for state in OutboxState}
        for state, count in self._conn.execute("SELECT state, count(*) FROM outcomes GROUP BY state"):
            counts[state] = count
        return counts

    def oldest_recorded(self, states: Sequence[OutboxState]) -> float | None:
        marks = ",".join("?" * len(states))
        row = self._conn.execute(f"SELECT min(recorded_at) FROM outcomes WHERE state IN ({marks})", [s.value for s in states]).fetchone()
        return None if row[0] is None else float(row[0])

    def next_due(self, states: Sequence[OutboxState] = (OutboxState.PENDING, OutboxState.FAILED)) -> float | None:
        """When the next of the outcomes in ``states`` is due."""
        marks = ",".join("?" * len(states))
        row = self._conn.execute(f"SELECT min(next_attempt_at) FROM outcomes WHERE state IN ({marks})", [s.value for s in states]).fetchone()
        return None if row[0] is None else float(row[0])

    def list_rows(self, state: OutboxState | None = None, limit: int = 50) -> list[OutboxRow]:
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        rows = self._conn.execute(
            "SELECT id, call_id, state, caller_e164, answered, recorded_at, attempts, rejections, next_attempt_at, last_error "
            f"FROM outcomes {where} ORDER BY recorded_at DESC, id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [outbox_row(r) for r in rows]

    def states_of(self, ids: Sequence[int]) -> dict[int, str]:
        """The state of each of ``ids`` that is an outcome in this outbox."""
        found: dict[int, str] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            found.update(self._conn.execute(f"SELECT id, state FROM outcomes WHERE id IN ({marks})", chunk).fetchall())
        return found

    def retry(self, now: float, ids: Sequence[int] | None = None) -> int:
        """Make dead and failed outcomes due now (``ids=None``: all of them); returns how many.

        The refusal count starts again, and an outcome nothing was written for
        asks the CRM about its caller afresh (the admin may have fixed the data).
        """
        with self._transaction():
            if ids is None:
                targets = [row[0] for row in self._conn.execute("SELECT id FROM outcomes WHERE state IN ('dead', 'failed')")]
            else:
                marks = ",".join("?" * len(ids)) or "NULL"
                targets = [row[0] for row in self._conn.execute(f"SELECT id FROM outcomes WHERE state IN ('dead', 'failed') AND id IN ({marks})", list(ids))]
            self._reopen(targets, now)
        return len(targets)

    def replay(self, since: float, now: float) -> int:
        """Deliver again every outcome recorded since ``since`` (done ones too); returns how many.

        Nothing is written twice: every record already written becomes
        uncertain, so the worker looks for it in the CRM and creates only
        what is missing there.
        """
        with self._transaction():
            targets = [
                row[0]
                for row in self._conn.execute(
                    "SELECT id FROM outcomes WHERE recorded_at >= ? AND NOT (state = 'in_flight' AND lease_until > ?)", (since, now)
                )
            ]
            for chunk in chunks(targets, 500):
                marks = ",".join("?" * len(chunk))
                # updated_at is kept: these were written long ago, the CRM's search shows them.
                self._conn.execute(f"UPDATE writes SET state = 'sent' WHERE state = 'done' AND outcome_id IN ({marks})", chunk)
            self._reopen(targets, now)
        return len(targets)

    def _reopen(self, ids: Sequence[int], now: float) -> None:
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            self._conn.execute(
                "UPDATE outcomes SET state = 'pending', next_attempt_at = ?, rejections = 0, lease_until = 0, lease_token = '', "
                "context = CASE WHEN EXISTS (SELECT 1 FROM writes w WHERE w.outcome_id = outcomes.id AND w.state IN ('done', 'sent')) "
                "THEN context ELSE '' END "
                f"WHERE id IN ({marks})",
                [now, *chunk],
            )

    def purge_done(self, before: float) -> int:
        """Forget delivered outcomes that ended before ``before``; returns how many."""
        with self._transaction():
            cursor = self._conn.execute("DELETE FROM outcomes WHERE state = 'done' AND ended_at < ?", (before,))
        return cursor.rowcount

    # -- call history -------------------------------------------------------------

    def last_answered_extension(self, caller_e164: str, since: float) -> str | None:
        """The extension that last answered ``caller_e164`` in a call ended after ``since``."""
        row = self._conn.execute(
            "SELECT answered_extension FROM outcomes WHERE caller_e164 = ? AND ended_at >= ? "
            "AND answered = 1 AND answered_extension != '' ORDER BY ended_at DESC, id DESC LIMIT 1",
            (caller_e164, since),
        ).fetchone()
        return row[0] if row else None

    # -- internals ----------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error): the write lock is taken up front,
    so two processes sharing the file never deadlock upgrading a read."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        if kind is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def new_lease_token() -> str:
    """``host:pid:random``, the holder of a claim: the form :func:`_holder_is_gone` reads back."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def _holder_is_gone(token: str) -> bool:
    """True when ``token`` names a process of this machine that has ended."""
    parts = token.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, owned by someone else
    return False


def lead_of_row(row: Sequence[Any]) -> tuple[WriteState, str, str]:
    """A ``(writes.state, writes.crm_id, outcomes.context)`` row as (state, lead id, owner id).

    Both stores answer ``lead_for_caller`` from such a row; the owner id lives
    in the saved CRM context, which is empty until the CRM was asked.
    """
    context = json.loads(row[2]) if row[2] else {}
    return WriteState(row[0]), row[1], str(context.get("lead_owner_id", ""))


def item_of_row(row: Sequence[Any], token: str, writes: dict[str, WriteRow] | None = None) -> OutboxItem:
    """An ``(id, payload, attempts, rejections, context)`` row claimed under ``token`` as an OutboxItem."""
    return OutboxItem(
        id=row[0],
        outcome=CallOutcome.from_dict(json.loads(row[1])),
        attempts=row[2],
        rejections=row[3],
        lease_token=token,
        context=json.loads(row[4]) if row[4] else None,
        writes=writes if writes is not None else {},
    )


def outbox_row(r: Sequence[Any]) -> OutboxRow:
    """A ``list_rows`` result row (id, call id, state, caller, answered, recorded, attempts, rejections, due, last error) as an OutboxRow."""
    return OutboxRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8], r[9])


def chunks(items: list[T], size: int) -> Iterable[list[T]]:
    """``items`` in consecutive lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
