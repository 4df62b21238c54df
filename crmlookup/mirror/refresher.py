"""Keeps the mirror's file up to date with the CRM, in the background, never on a call's path.

One pass at a time, of one of three kinds:

* **first load**: every record of every module, the modules side by side,
  a page at a time. Its cursors are stored after each page, so a restart
  goes on where it stopped; until every module is done the mirror does not
  answer (calls are looked up live).
* **refresh** (every ``refresh_s``): what changed since each module's
  watermark (less ``overlap_s``, for clock differences), the records
  deleted since, the users changed since. A watermark is Zoho's clock when
  its listing began, stored with the data.
* **reconcile** (every ``reconcile_s``): every record again; a stored record
  the listing did not see is deleted once the CRM confirms it is gone.

A pass that fails leaves what it stored; the next attempt backs off
(doubling up to ``retry_max_s``, never before a rate limit's wait is over).
Failure and recovery are logged once each, not per attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, UTC
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from ..condition import Condition
from ..durations import age_text
from ..errors import CrmAuthError, CrmError
from ..sqlite_thread import ConnectionThread
from . import store as keys
from .feed import ChangeFeed, Page
from .records import MirrorRecord, OpenRule
from .settings import MirrorSettings
from .store import MirrorFileError, MirrorStore

logger = logging.getLogger("crmroute.mirror")

T = TypeVar("T")

# Records the CRM is asked about, at most, when a reconcile did not see them.
MAX_SWEEP_CHECKS = 1000
SWEEP_CHUNK = 100
# A listing whose cursor the CRM refuses this many times in a row without progress gives up.
MAX_CURSOR_RESTARTS = 3


@dataclass
class MirrorStatus:
    """What the running process knows of its mirror (shared by the refresher and the lookups)."""

    ready: bool = False
    refreshed_at: float | None = None  # wall clock of the last good pass
    failing_since: float | None = None
    last_error: str = ""
    rule: OpenRule | None = None  # the open rule of the last pass (the live path needs it to store records)

    def age_s(self, now: float | None = None) -> float | None:
        if self.refreshed_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.refreshed_at)


@dataclass
class Cursor:
    """Where a module's listing stands."""

    since: float | None = None  # list changes after this (seconds since the epoch); None: everything
    token: str | None = None
    newest: float = 0.0  # the latest change read so far
    started: float | None = None  # the CRM's clock at the listing's first answer
    done: bool = False
    restarts: int = 0

    @classmethod
    def parse(cls, value: dict[str, Any] | None, since: float | None) -> Cursor:
        if not value:
            return cls(since=since)
        known = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        try:
            return cls(**known)
        except TypeError:
            return cls(since=since)


@dataclass
class PassSummary:
    """What one pass did, for ``crmroute mirror sync`` and the log."""

    kind: str
    written: Counter[str] = field(default_factory=Counter)
    deleted: Counter[str] = field(default_factory=Counter)
    users: int = 0
    credits: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        written = ", ".join(f"{module} {n}" for module, n in self.written.items() if n) or "nothing"
        deleted = ", ".join(f"{module} {n}" for module, n in self.deleted.items() if n) or "none"
        return f"{self.kind}: wrote {written}; deleted {deleted}; {self.users} user(s); {self.credits} API credit(s); {self.seconds:.1f} s"


class MirrorRefresher:
    """Runs the passes; :meth:`run` until stopped (``crmroute serve``), :meth:`sync` once (``crmroute mirror sync``)."""

    def __init__(
        self,
        store: MirrorStore,
        feed: ChangeFeed,
        settings: MirrorSettings,
        region: str,
        status: MirrorStatus,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._thread = ConnectionThread(store.conn, "mirror-writer")
        self._feed = feed
        self._settings = settings
        self._region = region
        self.status = status
        self._clock = clock
        self._wake = asyncio.Event()
        self._prepared = False
        self._pass_started = float("-inf")  # wall clock
        self._soon: asyncio.TimerHandle | None = None
        self._quick: asyncio.Task[None] | None = None
        self._passing = asyncio.Lock()  # one pass at a time, of whatever kind
        # Stale past stale_after_s without a good pass; fresh again at the next one.
        self.freshness = Condition(logger, "mirror stale", "mirror fresh again", clock=clock)

    # -- what the lookups see -------------------------------------------------

    async def open(self) -> None:
        """Read the file's progress (ready? refreshed when?) and apply a changed default region."""
        await self._thread.call(self._store.renormalise, self._region)
        state = await self._thread.call(self._state)
        self.status.ready = state.get(keys.LOAD_COMPLETE) == "1"
        refreshed = state.get(keys.LAST_REFRESH_AT)
        self.status.refreshed_at = float(refreshed) if refreshed else None

    def _state(self) -> dict[str, str]:
        return dict(self._store.conn.execute("SELECT key, value FROM mirror_state").fetchall())

    def remember(self, records: list[MirrorRecord]) -> None:
        """Store records the live path found (a number the mirror did not know), without waiting."""
        rule = self.status.rule
        if rule is None or not records:
            return  # the first pass brings them, judged by the CRM's rule
        future = self._thread.submit(self._store.apply, records, rule, self._region)
        future.add_done_callback(_log_failure)

    # -- the loop ---------------------------------------------------------------

    def wake(self) -> None:
        """Start the next pass now (a reload, an admin's ``mirror sync`` of the running server)."""
        self._wake.set()

    def refresh_soon(self) -> str:
        """A call came from a number the mirror does not know, perhaps a record created since
        the last refresh: list what changed, ``miss_refresh_s`` after the last pass began at
        the latest. Once, however many callers asked; says when, for the call's steps."""
        if not self._settings.miss_refresh_s:
            return "not in the CRM as of the last refresh"
        if self._soon is not None or (self._quick is not None and not self._quick.done()):
            return "the changes since the last refresh are being asked for already"
        delay = max(0.0, self._pass_started + self._settings.miss_refresh_s - self._clock())
        self._soon = asyncio.get_running_loop().call_later(delay, self._start_quick_pass)
        return f"the changes since the last refresh are asked for in {delay:.0f} s"

    def _start_quick_pass(self) -> None:
        self._soon = None
        if self._passing.locked():
            return  # a pass is listing the changes right now
        self._quick = asyncio.get_running_loop().create_task(self._quick_pass(), name="mirror quick pass")

    async def _quick_pass(self) -> None:
        """The records changed since each module's watermark, stored; the watermarks stay (the
        next refresh lists them again at no extra request, and checks deletions and users)."""
        async with self._passing:
            self._pass_started = self._clock()
            rule = self.status.rule
            if rule is None:
                return
            summary = PassSummary("quick refresh")
            sent_before = Counter(self._feed.requests_sent())
            try:
                state = await self._thread.call(self._state)
                await _all(self._list(module, rule, summary, since=since) for module, since in self._sinces(state).items())
            except Exception as exc:  # the next regular pass will say what is wrong
                logger.debug("mirror: quick refresh failed: %s", exc)
            finally:
                await self._count_credits(sent_before, summary)
            logger.info("mirror: %s", summary.describe())

    def _sinces(self, state: dict[str, str]) -> dict[str, float | None]:
        """Per module, when to list changes from: its watermark, less the overlap."""
        sinces = {}
        for module in self._feed.modules:
            watermark = _float(state.get(f"watermark:{module}"))
            sinces[module] = watermark - self._settings.overlap_s if watermark is not None else None
        return sinces

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            delay = float(self._settings.refresh_s)
            try:
                await self.sync()
                if failures:
                    logger.warning("mirror: refreshing works again after %d failed attempt(s)", failures)
                failures = 0
            except CrmAuthError as exc:
                failures += 1
                delay = float(self._settings.retry_max_s)
                self._report(failures, exc, delay, scope=exc.code == "OAUTH_SCOPE_MISMATCH")
            except CrmError as exc:
                failures += 1
                delay = max(min(self._settings.retry_max_s, self._settings.refresh_s * 2 ** (failures - 1)), self._feed.retry_in())
                self._report(failures, exc, delay)
            except (MirrorFileError, sqlite3.Error, OSError) as exc:
                failures += 1
                delay = float(self._settings.retry_max_s)
                self._report(failures, exc, delay)
            except Exception:  # a defect of ours must not end the refreshing for good
                failures += 1
                delay = float(self._settings.retry_max_s)
                logger.exception("mirror: refresh failed unexpectedly; next attempt in %.0f s", delay)
            self.check_freshness()
            await self._thread.call(self._store.put, {keys.NEXT_REFRESH_AT: str(self._clock() + delay)})
            await self._sleep(stop, delay)

    def check_freshness(self) -> bool:
        """Whether the mirror is fresh (a good pass within ``stale_after_s``); going stale is logged once."""
        age = self.status.age_s(self._clock())
        if not self.status.ready or age is None or age < self._settings.stale_after_s:
            self.freshness.recovered()
            return True
        why = f"; refreshing fails: {self.status.last_error}" if self.status.last_error else ""
        self.freshness.failing(f"last refreshed {age_text(age)} ago{why}; calls are answered from it as it is")
        return False

    async def _sleep(self, stop: asyncio.Event, delay: float) -> None:
        self._wake.clear()
        if self._soon is not None and self._soon.when() - asyncio.get_running_loop().time() >= delay:
            self._cancel_soon()  # the regular pass comes first anyway
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _report(self, failures: int, exc: Exception, delay: float, *, scope: bool = False) -> None:
        if failures > 1:
            logger.debug("mirror: attempt %d failed: %s", failures, exc)
            return
        self.status.failing_since = self._clock()
        if scope:
            logger.warning(
                "mirror: the Zoho token lacks a scope the mirror needs (%s): %s; calls are looked up live "
                "until a refresh token with it is configured (docs/zoho.md)", scope_for(str(exc)), exc,
            )
        elif self.status.ready:
            logger.warning("mirror: refresh failed (%s); calls are answered from the mirror as it is; next attempt in %.0f s", exc, delay)
        else:
            logger.warning("mirror: first load failed (%s); calls are looked up live; next attempt in %.0f s", exc, delay)

    # -- one pass ----------------------------------------------------------------

    async def sync(self, *, full: bool = False) -> PassSummary:
        """One pass: the first load if it is not done, else a reconcile (when due or ``full``), else a refresh."""
        async with self._passing:
            return await self._sync(full)

    async def _sync(self, full: bool) -> PassSummary:
        started = self._pass_started = self._clock()
        self._cancel_soon()
        sent_before = Counter(self._feed.requests_sent())
        await self._thread.call(self._store.put, {keys.LAST_ATTEMPT_AT: str(started)})
        summary = PassSummary("pass")  # until the pass knows its kind
        try:
            summary = await self._pass(full, started)
        except Exception as exc:
            self.status.last_error = str(exc)
            await self._thread.call(self._store.put, {keys.LAST_ERROR: f"{type(exc).__name__}: {exc}"[:500]})
            raise
        finally:
            await self._count_credits(sent_before, summary)
        summary.seconds = self._clock() - started
        finished = self._clock()
        await self._thread.call(self._store.put, {keys.LAST_REFRESH_AT: str(finished), keys.LAST_ERROR: None})
        self.status.refreshed_at = finished
        self.status.failing_since = None
        self.status.last_error = ""
        logger.info("mirror: %s", summary.describe())
        return summary

    async def _pass(self, full: bool, started: float) -> PassSummary:
        state = await self._thread.call(self._state)
        reconcile_due = started - float(state.get(keys.LAST_RECONCILE_AT) or 0) >= self._settings.reconcile_s
        loading = state.get(keys.LOAD_COMPLETE) != "1"
        rule = await self._feed.prepare(fresh=full or loading or reconcile_due or not self._prepared)
        self._prepared = True
        self.status.rule = rule
        await self._thread.call(self._store.rejudge, rule)
        if loading:
            return await self._load(rule)
        if full or reconcile_due:
            return await self._reconcile(rule)
        return await self._refresh(rule, state)

    async def _load(self, rule: OpenRule) -> PassSummary:
        summary = PassSummary("first load")
        generation = int(await self._thread.call(self._store.get, keys.GENERATION) or 0) or 1
        await self._thread.call(self._store.put, {keys.GENERATION: str(generation)})
        cursors = await _all(
            self._list(module, rule, summary, generation=generation, key=f"load:{module}") for module in self._feed.modules
        )
        await self._users(None, summary)
        values: dict[str, str | None] = {keys.LOAD_COMPLETE: "1", keys.LAST_RECONCILE_AT: str(self._clock())}
        for module, cursor in zip(self._feed.modules, cursors):
            values[f"watermark:{module}"] = str(cursor.started)
            values[f"load:{module}"] = None
        await self._thread.call(self._store.put, values)
        self.status.ready = True
        return summary

    async def _reconcile(self, rule: OpenRule) -> PassSummary:
        summary = PassSummary("reconcile")
        generation = int(await self._thread.call(self._store.get, keys.GENERATION) or 0) + 1
        await self._thread.call(self._store.put, {keys.GENERATION: str(generation)})
        cursors = await _all(self._list(module, rule, summary, generation=generation) for module in self._feed.modules)
        for module in self._feed.modules:
            summary.deleted[module] += await self._sweep(module, generation)
        await self._users(None, summary)
        values: dict[str, str | None] = {keys.LAST_RECONCILE_AT: str(self._clock())}
        values.update({f"watermark:{module}": str(cursor.started) for module, cursor in zip(self._feed.modules, cursors)})
        await self._thread.call(self._store.put, values)
        return summary

    async def _refresh(self, rule: OpenRule, state: dict[str, str]) -> PassSummary:
        summary = PassSummary("refresh")
        await _all(self._refresh_module(module, rule, state, summary) for module in self._feed.modules)
        since = _float(state.get("watermark:users"))
        await self._users(since - self._settings.overlap_s if since is not None else None, summary)
        return summary

    async def _refresh_module(self, module: str, rule: OpenRule, state: dict[str, str], summary: PassSummary) -> None:
        since = self._sinces(state)[module]
        cursor = await self._list(module, rule, summary, since=since)
        gone = await self._feed.deleted(module, _moment(since))
        if gone:
            summary.deleted[module] += await self._thread.call(self._store.delete, module, gone)
        await self._thread.call(self._store.put, {f"watermark:{module}": str(cursor.started)})

    async def _list(
        self,
        module: str,
        rule: OpenRule,
        summary: PassSummary,
        *,
        since: float | None = None,
        generation: int = 0,
        key: str = "",
    ) -> Cursor:
        """Every page of one listing, stored as it comes; with ``key`` its cursor is kept for a restart.

        The next page is asked for as soon as a page arrives, while that one is
        stored: a listing takes the CRM's time per page, not the CRM's and ours.
        """
        cursor = Cursor.parse(await self._thread.call(self._store.get_json, key) if key else None, since)
        ahead: asyncio.Future[Page] | None = None
        try:
            while not cursor.done:
                asked, ahead = ahead or asyncio.ensure_future(self._next_page(module, cursor)), None
                try:
                    page = await asked
                except CrmError as exc:
                    if not cursor.token or exc.code not in self._feed.cursor_refusals or cursor.restarts >= MAX_CURSOR_RESTARTS:
                        raise
                    # Go on from the last change read (one second back: its neighbours may share the second).
                    cursor.token, cursor.restarts = None, cursor.restarts + 1
                    cursor.since = cursor.newest - 1 if cursor.newest else cursor.since
                    continue
                if cursor.started is None:
                    cursor.started = page.server_time.timestamp() if page.server_time else self._clock()
                if page.next_token is not None:
                    ahead = asyncio.ensure_future(self._feed.list_page(module, since=_moment(cursor.since), token=page.next_token))
                summary.written[module] += await self._thread.call(self._store.apply, page.records, rule, self._region, generation)
                if page.newest > cursor.newest:
                    cursor.newest, cursor.restarts = page.newest, 0
                cursor.token = page.next_token
                cursor.done = page.next_token is None
                if key:
                    await self._thread.call(self._store.put, {key: json.dumps(asdict(cursor))})
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        return cursor

    def _next_page(self, module: str, cursor: Cursor) -> Awaitable[Page]:
        return self._feed.list_page(module, since=_moment(cursor.since), token=cursor.token)

    async def _users(self, since: float | None, summary: PassSummary) -> None:
        users, server_time = await self._feed.users(_moment(since))
        if users:
            await self._thread.call(self._store.apply_users, users)
        summary.users += len(users)
        stamp = server_time.timestamp() if server_time else self._clock()
        await self._thread.call(self._store.put, {"watermark:users": str(stamp)})

    async def _sweep(self, module: str, generation: int) -> int:
        """Delete the records the full listing did not see, once the CRM says they are gone."""
        unseen = await self._thread.call(self._store.unseen, module, generation, MAX_SWEEP_CHECKS + 1)
        if len(unseen) > MAX_SWEEP_CHECKS:
            logger.warning("mirror: the reconcile did not see more than %d %s; checking the first %d only", MAX_SWEEP_CHECKS, module, MAX_SWEEP_CHECKS)
            unseen = unseen[:MAX_SWEEP_CHECKS]
        deleted = 0
        for start in range(0, len(unseen), SWEEP_CHUNK):
            chunk = unseen[start:start + SWEEP_CHUNK]
            existing = await self._feed.existing(module, chunk)
            gone = [record_id for record_id in chunk if record_id not in existing]
            if gone:
                deleted += await self._thread.call(self._store.delete, module, gone)
        return deleted

    async def _count_credits(self, sent_before: Counter[str], summary: PassSummary) -> None:
        """Store what was spent since ``sent_before`` (by purpose: lookups made meanwhile too)."""
        spent = Counter(self._feed.requests_sent())
        spent.subtract(sent_before)
        await self._thread.call(self._store.add_credits, {purpose: n for purpose, n in spent.items() if n > 0})
        summary.credits = spent["mirror"] + spent["metadata"]

    def _cancel_soon(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def close(self) -> None:
        """Close the file without a running loop (the mirror could not be opened after all)."""
        self._thread.close()

    async def aclose(self) -> None:
        self._cancel_soon()
        if self._quick is not None:
            self._quick.cancel()
            await asyncio.gather(self._quick, return_exceptions=True)
        await self._thread.aclose()


def scope_for(message: str) -> str:
    """The scope a refused request needed, told from the request in the error message."""
    if "/settings/fields" in message:
        return "ZohoCRM.settings.fields.READ"
    if "/settings/" in message:
        return "ZohoCRM.settings.READ"
    if "/users" in message:
        return "ZohoCRM.users.READ"
    return "ZohoCRM.modules.READ"


async def _all(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Every job, side by side, each to its end (one module failing does not stop the others'
    progress); then the first failure, if any, is raised."""
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _moment(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        logger.warning("mirror: could not store what a live lookup found: %s", exc)
