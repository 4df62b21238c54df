"""The outbox as a running server holds it: opened when it can be, outcomes
kept in memory while it cannot take them.

Routing never needs the outbox (unless a policy uses ``LastAgent``), so a
server whose outbox is on a full disk, damaged, or in a folder it may not
write still starts and routes. The keeper logs at ERROR what is wrong and
tries again every ``retry_s``; the delivery worker starts once the file opens.
An outcome that cannot be committed, then or later (the disk filled up), is
kept in a bounded spool in memory and committed as soon as the outbox takes
it; the session says which happened (``recorded`` or ``spooled``), so the
dialplan can tell an outcome on disk from one that is not.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Callable

from crmlookup.condition import Condition

from ..outcome import CallOutcome
from .interface import OutboxStore, open_store, store_location
from .settings import StoreSettings
from .store import OutboxError

logger = logging.getLogger("crmroute.outbox")

# Outcomes kept in memory at most while the outbox cannot take them (a few KiB each).
SPOOL_LIMIT = 10_000
# How often an outbox that cannot be opened, or a spool that cannot be committed, is tried again.
RETRY_S = 5.0
# The meta row a readiness probe writes (a real commit: a full disk or a folder gone read-only shows).
PROBE_KEY = "probe"


class Recording(str, enum.Enum):
    """What became of an outcome handed to :meth:`OutboxKeeper.record`."""

    RECORDED = "recorded"  # committed to the outbox now
    DUPLICATE = "duplicate"  # this call's outcome was committed before
    SPOOLED = "spooled"  # not on disk: kept in memory until the outbox takes it
    LOST = "lost"  # not on disk and the spool is full: logged with everything needed to enter it by hand

    @property
    def committed(self) -> bool:
        return self in (Recording.RECORDED, Recording.DUPLICATE)


class OutboxKeeper:
    """The outbox at ``path`` (or in the database ``store`` names), opened on first need and again after a failure."""

    def __init__(
        self,
        path: Path,
        *,
        store: StoreSettings | None = None,
        spool_limit: int = SPOOL_LIMIT,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._file = path
        self._store = store
        try:
            self.path = store_location(path, store)
        except OutboxError as exc:  # the URL's file cannot be read: said when it is opened
            self.path = str(exc)
        self._spool_limit = spool_limit
        self._retry_s = retry_s
        self._clock = clock
        self._outbox: OutboxStore | None = None
        self._tried_at: float | None = None
        # The open under way, if any: an outcome that comes meanwhile waits for it rather than
        # being spooled (and the dialplan told "spooled") while the file is simply being opened.
        self._opening: asyncio.Task[OutboxStore | None] | None = None
        self.problem = ""  # why the outbox cannot be used, while it cannot
        self._spool: deque[tuple[CallOutcome, float]] = deque()
        self._spooled = asyncio.Event()
        # Logged once when the outbox stops taking commits, once when it takes them again.
        self._usable = Condition(logger, "outbox not usable", f"outbox {self.path}: commits work again", level=logging.ERROR, clock=clock)

    # -- the outbox ---------------------------------------------------------

    def current(self) -> OutboxStore:
        """The open outbox; :class:`OutboxError` saying why when there is none."""
        if self._outbox is None:
            raise OutboxError(f"outbox {self.path} is not open: {self.problem or 'not opened yet'}")
        return self._outbox

    @property
    def opened(self) -> OutboxStore | None:
        """The outbox if it is open; never opens it."""
        return self._outbox

    def open_now(self) -> OutboxStore:
        """The outbox, opened now if need be (blocking: the CLI, start-up); raises :class:`OutboxError`."""
        if self._outbox is None:
            self._tried_at = self._clock()
            self._opened(open_store(self._file, self._store))
        return self.current()

    async def open(self) -> OutboxStore | None:
        """The outbox, opened off the event loop if need be; None (the reason logged) when it cannot be.

        Callers that come while an open is under way share it.
        """
        if self._outbox is not None:
            return self._outbox
        if self._opening is None:
            self._tried_at = self._clock()
            self._opening = asyncio.ensure_future(self._open_off_loop())
        opening = self._opening
        try:
            return await asyncio.shield(opening)  # one caller cancelled does not cancel the open
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None

    async def _open_off_loop(self) -> OutboxStore | None:
        try:
            self._opened(await asyncio.to_thread(open_store, self._file, self._store))
        except OutboxError as exc:
            self.trouble(str(exc))
            return None
        return self._outbox

    def _opened(self, outbox: OutboxStore) -> None:
        self._outbox = outbox
        self._works_again()

    def _works_again(self) -> None:
        self.problem = ""
        self._usable.recovered()

    def trouble(self, problem: str) -> None:
        """Log a new problem at ERROR (the same one again only at DEBUG)."""
        told = f"{problem}; routing goes on, outcomes are kept in memory (up to {self._spool_limit}) and the outbox is tried again every {self._retry_s:.0f} s"
        if not self._usable.failing(told):  # it was failing already: a new problem is told, the same one is not
            if problem != self.problem:
                logger.error("%s", told)
            else:
                logger.debug("%s (still)", problem)
        self.problem = problem

    async def probe(self, now: float) -> str:
        """Whether the outbox takes a commit now: "" when it does, else why not (the readiness check)."""
        outbox = self._outbox
        if outbox is None:
            return self.problem or "not opened yet"
        try:
            await outbox.on_thread(outbox.set_meta, PROBE_KEY, repr(now))
        except Exception as exc:  # sqlite3.Error, OSError: a full disk, a folder that is no longer writable
            self.trouble(f"outbox {self.path} cannot commit: {exc}")
            return self.problem
        if self.problem:
            self._works_again()
            if self._spool:
                self._spooled.set()  # what waits in memory goes in now
        return ""

    # -- outcomes -----------------------------------------------------------

    async def record(self, outcome: CallOutcome, now: float) -> Recording:
        """Commit ``outcome``, or keep it in the spool when the outbox cannot take it."""
        outbox = self._outbox
        due = self._tried_at is None or self._clock() - self._tried_at >= self._retry_s
        if outbox is None and (self._opening is not None or due):
            outbox = await self.open()
        if outbox is not None and outbox.remote and self.problem and self._spool:
            # A database that is failing: this outcome joins the spool now rather
            # than wait a connection timeout; the spool goes in when it is back.
            return self._keep(outcome, now)
        if outbox is not None:
            try:
                return Recording.RECORDED if await outbox.record(outcome, now) else Recording.DUPLICATE
            except OutboxError as exc:
                self.trouble(f"outbox {self.path} cannot commit: {exc}")
        return self._keep(outcome, now)

    def _keep(self, outcome: CallOutcome, now: float) -> Recording:
        if len(self._spool) >= self._spool_limit:
            lost(outcome, f"the outbox cannot take it ({self.problem}) and {self._spool_limit} outcomes already wait in memory")
            return Recording.LOST
        self._spool.append((outcome, now))
        self._spooled.set()
        return Recording.SPOOLED

    @property
    def spooled(self) -> int:
        """Outcomes waiting in memory."""
        return len(self._spool)

    async def commit_spool(self) -> bool:
        """Commit what waits in memory; True when nothing waits any more."""
        if not self._spool:
            return True
        outbox = await self.open()
        if outbox is None:
            return False
        batch = list(self._spool)
        try:
            await outbox.on_thread(outbox.record_many, batch)
        except Exception as exc:  # sqlite3.Error, OSError: the disk is still full, say
            self.trouble(f"outbox {self.path} cannot commit: {exc}")
            return False
        for _ in batch:
            self._spool.popleft()
        logger.info("outbox %s: %d outcome(s) kept in memory are committed", self.path, len(batch))
        self._works_again()
        return not self._spool

    async def run(self, stop: asyncio.Event, opened: Callable[[OutboxStore], None]) -> None:
        """Until ``stop``: open the outbox (``opened`` is called once it is), and commit the spool when it holds anything."""
        started = False
        while not stop.is_set():
            outbox = await self.open()
            if outbox is not None and not started:
                opened(outbox)
                started = True
            if outbox is not None and await self.commit_spool():
                self._spooled.clear()
                await first_of(stop, self._spooled)
            else:
                await first_of(stop, timeout=self._retry_s)

    async def aclose(self) -> None:
        """Commit what waits in memory one last time (what cannot be is logged as lost), then close."""
        if self._spool and not await self.commit_spool():
            for outcome, _ in self._spool:
                lost(outcome, f"the process ends and the outbox cannot take it ({self.problem})")
            self._spool.clear()
        if self._outbox is not None:
            await self._outbox.aclose()


def lost(outcome: CallOutcome, why: str) -> None:
    """The one place an outcome is lost: said loudly, with everything needed to enter it by hand."""
    logger.error("outcome NOT recorded: %s; outcome=%s", why, json.dumps(outcome.to_dict(), ensure_ascii=False))


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Until one of ``events`` is set or ``timeout`` seconds pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
