"""The outbox in PostgreSQL (``[store] url``): one queue and one history for several routers.

The same states, the same write marks and the same worker as the SQLite
outbox (:mod:`.store`); what differs is how several processes on several
machines share it safely:

* a round claims its outcomes with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
  a lease: two routers never take the same outcome, and an outcome whose
  router died is taken up by another once the lease runs out (at once when
  the dead process was on this machine);
* the lead of an unknown caller is held in ``caller_leads``, whose primary
  key is the caller's number: whichever router gets there first creates the
  lead, every other outcome of that caller waits for it and is logged on it;
* an outcome is keyed on the call's unique id: the dialplan sending it again
  to another router records nothing new.

Connections come from a pool (``psycopg_pool``) with a connect timeout, a
statement timeout, and a check of each connection as it is taken, so a
database that restarted is reconnected to by itself. Every database failure
is raised as :class:`~.store.OutboxError`: the keeper then keeps outcomes in
memory and commits them when the database is back, and routing goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterable, Iterator, ParamSpec, Sequence, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..outcome import CallOutcome
from .group_commit import GroupCommit
from .settings import StoreSettings, redacted_url
from .store import (
    MAX_ERROR_LENGTH,
    Finish,
    OutboxError,
    OutboxItem,
    OutboxRow,
    OutboxState,
    WriteRow,
    WriteState,
    _holder_is_gone,
    item_of_row,
    lead_of_row,
    new_lease_token,
    outbox_row,
)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 1
# After the call history failed to answer, calls route without asking it for this long.
READ_PAUSE_S = 2.0
# Held while the schema is created, so two routers starting together do not race.
_SCHEMA_LOCK = 0x63726D72  # "crmr"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id              BIGSERIAL PRIMARY KEY,
    call_id         TEXT NOT NULL UNIQUE,
    recorded_at     DOUBLE PRECISION NOT NULL,
    ended_at        DOUBLE PRECISION NOT NULL,
    caller_e164     TEXT NOT NULL DEFAULT '',
    answered        BOOLEAN NOT NULL,
    answered_extension TEXT NOT NULL DEFAULT '',
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'done', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    rejections      INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_until     DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_token     TEXT NOT NULL DEFAULT '',
    context         TEXT NOT NULL DEFAULT '',
    done_at         DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS outcomes_due ON outcomes (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outcomes_by_caller ON outcomes (caller_e164, ended_at);
CREATE TABLE IF NOT EXISTS writes (
    outcome_id  BIGINT NOT NULL REFERENCES outcomes (id) ON DELETE CASCADE,
    step        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('sent', 'done', 'rejected')),
    crm_id      TEXT NOT NULL DEFAULT '',
    error       TEXT NOT NULL DEFAULT '',
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (outcome_id, step)
);
-- One lead per unknown caller, whichever router creates it: the caller is the key.
CREATE TABLE IF NOT EXISTS caller_leads (
    caller_e164 TEXT PRIMARY KEY,
    outcome_id  BIGINT NOT NULL REFERENCES outcomes (id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Whether an outcome's lead write still counts: done (the lead is in the CRM, even when a
# later step of its outcome died: a recording that never came), or under way for an outcome
# that is not dead. The SQLite outbox asks the same.
_LEAD_STILL_COUNTS = "w.step = 'lead' AND (w.state = 'done' OR (w.state = 'sent' AND o.state != 'dead'))"
_LEAD_COUNTS = f"SELECT 1 FROM writes w JOIN outcomes o ON o.id = w.outcome_id WHERE o.id = %s AND {_LEAD_STILL_COUNTS}"


class PostgresOutbox:
    """The outbox in a PostgreSQL database. Open with :meth:`open`; close with :meth:`close` / :meth:`aclose`."""

    remote = True

    def __init__(self, pool: ConnectionPool, path: str, settings: StoreSettings):
        self._pool = pool
        self.path = path
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=settings.pool_max + 2, thread_name_prefix="outbox-pg")
        # Outcomes waiting to be committed together (group commit): see record().
        self._group = GroupCommit(lambda batch: self.record_many(batch), self._executor.submit)
        self._reads_fail_until = 0.0  # time.monotonic(): the call history is not asked before then

    @classmethod
    def open(cls, settings: StoreSettings, url: str) -> PostgresOutbox:
        """Connect (waiting at most ``connect_timeout_s``) and create the schema if need be; raises :class:`OutboxError`."""
        where = redacted_url(url)
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(settings.connect_timeout_s)),
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
            "application_name": "crmroute",
            "autocommit": True,
        }
        password = _password(settings)
        if password:
            kwargs["password"] = password
        pool = ConnectionPool(
            url, kwargs=kwargs, min_size=settings.pool_min, max_size=settings.pool_max, open=False,
            timeout=settings.connect_timeout_s, check=ConnectionPool.check_connection, name="crmroute-outbox",
            # A failed connection attempt is not retried in the background: the next
            # request for a connection makes a new one, so a database that is back
            # is used at once (the keeper and the worker ask every few seconds).
            reconnect_timeout=0,
        )
        try:
            pool.open(wait=True, timeout=settings.connect_timeout_s)
            with pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(SCHEMA)
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
        except (psycopg.Error, PoolTimeout) as exc:
            pool.close()
            raise OutboxError(f"cannot open the outbox in {where}: {_reason(exc)}") from None
        return cls(pool, where, settings)

    # -- threads ------------------------------------------------------------

    async def on_thread(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` on one of the store's threads (each takes a pooled connection), awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._pool.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    @contextmanager
    def _transaction(self, wait: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction; every failure as :class:`OutboxError`."""
        try:
            with self._pool.connection(timeout=wait) as conn, conn.transaction():
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise OutboxError(f"outbox {self.path}: {_reason(exc)}") from None

    # -- recording ----------------------------------------------------------

    async def record(self, outcome: CallOutcome, now: float) -> bool:
        """Commit ``outcome``; True if new, False if this call was already recorded (by any router).

        Outcomes recorded while a commit is under way share the next
        transaction (group commit, as the SQLite outbox does): each caller
        still returns only once its outcome is committed.
        """
        return await self._group.record(outcome, now)

    def record_many(self, outcomes: Sequence[tuple[CallOutcome, float]]) -> list[bool]:
        new = []
        with self._transaction() as conn:
            for outcome, now in outcomes:
                cursor = conn.execute(
                    "INSERT INTO outcomes (call_id, recorded_at, ended_at, caller_e164, answered, answered_extension, payload, next_attempt_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (call_id) DO NOTHING",
                    (
                        outcome.call_id, now, outcome.ended_at, outcome.caller_e164, outcome.answered,
                        outcome.answered_extension, json.dumps(outcome.to_dict(), ensure_ascii=False), now,
                    ),
                )
                new.append(cursor.rowcount == 1)
        return new

    # -- the worker's side ----------------------------------------------------

    def claim(self, now: float, limit: int, lease_s: float) -> list[OutboxItem]:
        """Take up to ``limit`` due outcomes; rows another router holds locked are skipped, not waited for."""
        token = new_lease_token()
        with self._transaction() as conn:
            rows = conn.execute(
                "WITH due AS (SELECT id FROM outcomes "
                "  WHERE (state IN ('pending', 'failed') AND next_attempt_at <= %(now)s) "
                "     OR (state = 'in_flight' AND lease_until <= %(now)s) "
                "  ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                "UPDATE outcomes o SET state = 'in_flight', lease_until = %(until)s, lease_token = %(token)s "
                "FROM due WHERE o.id = due.id "
                "RETURNING o.id, o.payload, o.attempts, o.rejections, o.context, o.next_attempt_at",
                {"now": now, "limit": limit, "until": now + lease_s, "token": token},
            ).fetchall()
            writes = self._writes(conn, [row[0] for row in rows])
        rows.sort(key=lambda row: (row[5], row[0]))
        return [item_of_row(row, token, writes.get(row[0], {})) for row in rows]

    def writes_for(self, ids: Sequence[int]) -> dict[int, dict[str, WriteRow]]:
        with self._transaction() as conn:
            return self._writes(conn, ids)

    @staticmethod
    def _writes(conn: psycopg.Connection[Any], ids: Sequence[int]) -> dict[int, dict[str, WriteRow]]:
        out: dict[int, dict[str, WriteRow]] = {}
        if not ids:
            return out
        for outcome_id, step, state, crm_id, error, updated_at in conn.execute(
            "SELECT outcome_id, step, state, crm_id, error, updated_at FROM writes WHERE outcome_id = ANY(%s)", (list(ids),)
        ):
            out.setdefault(outcome_id, {})[step] = WriteRow(step, WriteState(state), crm_id, error, updated_at)
        return out

    def save_contexts(self, contexts: Sequence[tuple[int, dict[str, Any] | None]]) -> None:
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE outcomes SET context = %s WHERE id = %s",
                [(json.dumps(context, ensure_ascii=False) if context is not None else "", oid) for oid, context in contexts],
            )

    def lead_for_caller(self, caller_e164: str, exclude_id: int) -> tuple[WriteState, str, str] | None:
        """The lead another live outcome of this caller created (or is creating): (state, lead id, owner id)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT w.state, w.crm_id, o.context FROM writes w JOIN outcomes o ON o.id = w.outcome_id "
                f"WHERE o.caller_e164 = %s AND o.id != %s AND {_LEAD_STILL_COUNTS} "
                "ORDER BY w.state = 'done' DESC, o.id LIMIT 1",
                (caller_e164, exclude_id),
            ).fetchone()
        if row is None:
            return None
        return lead_of_row(row)

    def claim_leads(self, leads: Sequence[tuple[int, str]], now: float) -> set[int]:
        """Mark each ``(outcome_id, caller)``'s lead as being sent, unless another live
        outcome holds that caller's lead; returns the ids refused.

        The caller's row in ``caller_leads`` is the guard: taken with an insert
        (the primary key lets only one router in) or, from an outcome whose
        lead no longer counts (dead, refused), with an update under its row lock.
        """
        refused = set()
        with self._transaction() as conn:
            for outcome_id, caller in leads:
                if caller and not self._hold_lead(conn, outcome_id, caller):
                    refused.add(outcome_id)
                    continue
                conn.execute(
                    "INSERT INTO writes (outcome_id, step, state, crm_id, error, updated_at) VALUES (%s, 'lead', 'sent', '', '', %s) "
                    "ON CONFLICT (outcome_id, step) DO UPDATE SET state = 'sent', crm_id = '', error = '', updated_at = excluded.updated_at",
                    (outcome_id, now),
                )
        return refused

    @staticmethod
    def _hold_lead(conn: psycopg.Connection[Any], outcome_id: int, caller: str) -> bool:
        """Make ``outcome_id`` the holder of ``caller``'s lead; False if another live outcome holds it."""
        taken = conn.execute(
            "INSERT INTO caller_leads (caller_e164, outcome_id) VALUES (%s, %s) ON CONFLICT (caller_e164) DO NOTHING", (caller, outcome_id)
        ).rowcount
        if taken:
            return True
        row = conn.execute("SELECT outcome_id FROM caller_leads WHERE caller_e164 = %s FOR UPDATE", (caller,)).fetchone()
        if row is None:  # its holder was purged a moment ago: take it
            conn.execute("INSERT INTO caller_leads (caller_e164, outcome_id) VALUES (%s, %s)", (caller, outcome_id))
            return True
        holder = row[0]
        if holder == outcome_id:
            return True
        if conn.execute(_LEAD_COUNTS, (holder,)).fetchone():
            return False
        conn.execute("UPDATE caller_leads SET outcome_id = %s WHERE caller_e164 = %s", (outcome_id, caller))
        return True

    def release_orphans(self, now: float) -> int:
        """Make outcomes claimed by a process of this machine that no longer runs due at once."""
        with self._transaction() as conn:
            tokens = [row[0] for row in conn.execute("SELECT DISTINCT lease_token FROM outcomes WHERE state = 'in_flight' AND lease_until > %s", (now,))]
            orphans = [token for token in tokens if _holder_is_gone(token)]
            if not orphans:
                return 0
            return conn.execute(
                "UPDATE outcomes SET lease_until = 0 WHERE state = 'in_flight' AND lease_token = ANY(%s)", (orphans,)
            ).rowcount

    def mark_writes(self, rows: Iterable[tuple[int, str, WriteState, str, str]], now: float) -> None:
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO writes (outcome_id, step, state, crm_id, error, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (outcome_id, step) DO UPDATE SET state = excluded.state, crm_id = excluded.crm_id, "
                "error = excluded.error, updated_at = excluded.updated_at",
                [(oid, step, state.value, crm_id, error[:MAX_ERROR_LENGTH], now) for oid, step, state, crm_id, error in rows],
            )

    def unmark_sent(self, writes: Iterable[tuple[int, str]]) -> None:
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany("DELETE FROM writes WHERE outcome_id = %s AND step = %s AND state = 'sent'", list(writes))

    def finish(self, finishes: Sequence[Finish], now: float) -> None:
        """End the attempts of claimed outcomes (only those still holding our lease)."""
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE outcomes SET state = %s, last_error = %s, next_attempt_at = %s, lease_until = 0, lease_token = '', "
                "attempts = attempts + %s, rejections = rejections + %s, "
                "done_at = CASE WHEN %s = 'done' THEN %s ELSE done_at END "
                "WHERE id = %s AND state = 'in_flight' AND lease_token = %s",
                [
                    (
                        f.state.value, f.error[:MAX_ERROR_LENGTH], f.next_attempt_at or now,
                        int(f.counted), int(f.rejected), f.state.value, now, f.id, f.lease_token,
                    )
                    for f in finishes
                ],
            )

    # -- the queue's pause (shared by every router) ---------------------------------

    def set_meta(self, key: str, value: str | None) -> None:
        with self._transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = %s", (key,))
            else:
                conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def get_meta(self, key: str) -> str | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    # -- the admin's side ---------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in OutboxState}
        with self._transaction() as conn:
            for state, count in conn.execute("SELECT state, count(*) FROM outcomes GROUP BY state"):
                counts[state] = count
        return counts

    def oldest_recorded(self, states: Sequence[OutboxState]) -> float | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT min(recorded_at) FROM outcomes WHERE state = ANY(%s)", ([s.value for s in states],)).fetchone()
        return row[0] if row else None

    def next_due(self, states: Sequence[OutboxState] = (OutboxState.PENDING, OutboxState.FAILED)) -> float | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT min(next_attempt_at) FROM outcomes WHERE state = ANY(%s)", ([s.value for s in states],)).fetchone()
        return row[0] if row else None

    def list_rows(self, state: OutboxState | None = None, limit: int = 50) -> list[OutboxRow]:
        where, args = ("WHERE state = %s", [state.value]) if state else ("", [])
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, call_id, state, caller_e164, answered, recorded_at, attempts, rejections, next_attempt_at, last_error "
                f"FROM outcomes {where} ORDER BY recorded_at DESC, id DESC LIMIT %s",
                [*args, limit],
            ).fetchall()
        return [outbox_row(r) for r in rows]

    def states_of(self, ids: Sequence[int]) -> dict[int, str]:
        with self._transaction() as conn:
            return dict(conn.execute("SELECT id, state FROM outcomes WHERE id = ANY(%s)", (list(ids),)).fetchall())

    def retry(self, now: float, ids: Sequence[int] | None = None) -> int:
        """Make dead and failed outcomes due now (``ids=None``: all of them); returns how many."""
        with self._transaction() as conn:
            if ids is None:
                targets = [row[0] for row in conn.execute("SELECT id FROM outcomes WHERE state IN ('dead', 'failed') FOR UPDATE")]
            else:
                targets = [
                    row[0]
                    for row in conn.execute("SELECT id FROM outcomes WHERE state IN ('dead', 'failed') AND id = ANY(%s) FOR UPDATE", (list(ids),))
                ]
            self._reopen(conn, targets, now)
        return len(targets)

    def replay(self, since: float, now: float) -> int:
        """Deliver again every outcome recorded since ``since``; what was written is looked for before it is written again."""
        with self._transaction() as conn:
            targets = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM outcomes WHERE recorded_at >= %s AND NOT (state = 'in_flight' AND lease_until > %s) FOR UPDATE", (since, now)
                )
            ]
            conn.execute("UPDATE writes SET state = 'sent' WHERE state = 'done' AND outcome_id = ANY(%s)", (targets,))
            self._reopen(conn, targets, now)
        return len(targets)

    @staticmethod
    def _reopen(conn: psycopg.Connection[Any], ids: Sequence[int], now: float) -> None:
        conn.execute(
            "UPDATE outcomes SET state = 'pending', next_attempt_at = %s, rejections = 0, lease_until = 0, lease_token = '', "
            "context = CASE WHEN EXISTS (SELECT 1 FROM writes w WHERE w.outcome_id = outcomes.id AND w.state IN ('done', 'sent')) "
            "THEN context ELSE '' END "
            "WHERE id = ANY(%s)",
            (now, list(ids)),
        )

    def purge_done(self, before: float) -> int:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM outcomes WHERE state = 'done' AND ended_at < %s", (before,)).rowcount

    # -- call history -------------------------------------------------------------

    def last_answered_extension(self, caller_e164: str, since: float) -> str | None:
        """The extension that last answered ``caller_e164`` (on any router) in a call ended after ``since``.

        On the call path: it waits ``read_wait_ms`` at most for a connection
        (the router's deadline is the real bound; this keeps threads free),
        and after a failure does not ask for ``READ_PAUSE_S``.
        """
        if time.monotonic() < self._reads_fail_until:
            raise OutboxError(f"outbox {self.path}: not asked, it failed less than {READ_PAUSE_S:.0f} s ago")
        try:
            with self._transaction(wait=self._settings.read_wait_ms / 1000) as conn:
                row = conn.execute(
                    "SELECT answered_extension FROM outcomes WHERE caller_e164 = %s AND ended_at >= %s "
                    "AND answered AND answered_extension != '' ORDER BY ended_at DESC, id DESC LIMIT 1",
                    (caller_e164, since),
                ).fetchone()
        except OutboxError:
            # The database is down or swamped: the calls of the next few seconds
            # route without asking it, rather than each waiting read_wait_ms.
            self._reads_fail_until = time.monotonic() + READ_PAUSE_S
            raise
        return row[0] if row else None


def _password(settings: StoreSettings) -> str:
    try:
        return settings.resolved_password()
    except ValueError as exc:
        raise OutboxError(f"store.{exc}") from None


def _reason(exc: BaseException) -> str:
    """A database error in one line (psycopg's messages may span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:MAX_ERROR_LENGTH]
