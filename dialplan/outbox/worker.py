"""The delivery worker: delivers recorded outcomes to the CRM, nothing lost, nothing twice.

One round takes a batch of due outcomes, works out what each should leave in
the CRM (:mod:`.plan`), and writes leads, then calls, then tasks, each kind in
requests of up to ``batch_size`` records. What the CRM says decides each
outcome's next state:

* every record written: ``done``;
* a record refused for its data: ``failed``, retried with back-off, and
  ``dead`` after ``max_attempts`` refusals, with the CRM's words kept; the
  other outcomes of the batch go on;
* the CRM down, slow, or asking us to slow down (429): ``failed``, retried
  with exponential back-off and jitter (or after the CRM's ``Retry-After``),
  for as long as it takes; nothing is ever dropped for that;
* our credentials refused: the whole queue pauses, nothing is counted
  against any outcome, and everything is replayed once a token works again.

A record whose request went out but whose answer never came back (a timeout,
a crash) is looked for in the CRM by the call's key before it is created
again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from crmlookup.backend import CrmBackend
from crmlookup.condition import Condition
from crmlookup.errors import CrmAuthError, CrmBadResponse, CrmError, CrmRateLimited
from crmlookup.writer import CallEntry, CrmWriter, Entry, LeadEntry, RecordingWriter, RecordRef, WriteKind, WriteResult

from ..hours import BusinessHours
from ..policy import Policy
from ..policy_settings import owner_key
from ..recordings import RecordingSettings
from ..settings import RoutingSettings
from .context import ExtensionDirectory, CrmContext, resolve_context
from .keeper import first_of
from .plan import PlannedWrite, Step, lead_name, plan_writes, zone
from .recording_step import RecordingStep, StepResult
from .settings import OutboxSettings, OutcomeSettings
from .interface import OutboxStore
from .store import Finish, OutboxError, OutboxItem, OutboxState, WriteRow, WriteState, chunks

logger = logging.getLogger("crmroute.outbox")

PAUSE_KEY = "paused"
# The CRM's users (who has which extension) are asked for again after this long.
USERS_TTL_S = 300.0
PURGE_EVERY_S = 3600.0
_ORDER = ((Step.LEAD, WriteKind.LEAD), (Step.CALL, WriteKind.CALL), (Step.TASK, WriteKind.TASK), (Step.TICKET, WriteKind.CALL))


@dataclass
class RoundResult:
    """What one round did."""

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    refused: int = 0  # outcomes with a record the CRM refused for its data
    paused: str = ""  # why the queue paused, if it did
    retry_after: float = 0.0  # the CRM asked us to wait this long
    error: str = ""  # the first outcome's error, when one failed


@dataclass
class FlushSummary:
    """What :meth:`DeliveryWorker.flush` did, for the CLI."""

    rounds: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    refused: int = 0
    paused: str = ""

    def add(self, result: RoundResult) -> None:
        self.rounds += 1
        self.delivered += result.delivered
        self.failed += result.failed
        self.dead += result.dead
        self.refused += result.refused
        self.paused = result.paused


@dataclass
class _Attempt:
    """One outcome within a round."""

    item: OutboxItem
    plan: list[PlannedWrite] | None = None  # None until planned: an unplanned outcome is never complete
    error: str = ""
    rejected: bool = False  # the CRM refused a record's data
    transient: bool = False  # the CRM (or we) failed: try again later
    deferred: bool = False  # not this round (another outcome creates the same lead)
    retry_at: float = 0.0
    waiting: str = ""  # what a deferred outcome waits for, when not an earlier write (its recording)
    fatal: bool = False  # it can never be delivered as it is: dead now, ``error`` says why

    @property
    def open(self) -> bool:
        return not (self.error or self.deferred)

    def complete(self) -> bool:
        return self.open and self.plan is not None and all(self._done(w.step) for w in self.plan)

    def _done(self, step: str) -> bool:
        row = self.item.writes.get(step)
        return row is not None and row.state is WriteState.DONE


class DeliveryWorker:
    """Delivers the outbox to a :class:`~crmlookup.writer.CrmWriter`."""

    def __init__(
        self,
        outbox: OutboxStore,
        writer: CrmWriter,
        backend: CrmBackend,
        *,
        settings: OutboxSettings,
        outcomes: OutcomeSettings,
        routing: RoutingSettings,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        recordings: RecordingSettings | None = None,
    ):
        self._outbox = outbox
        self._writer = writer
        self._backend = backend
        self._settings = settings
        self._outcomes = outcomes
        self._routing = routing
        self._clock = clock
        self._jitter = jitter
        self._tz = zone(outcomes)
        self._book = routing.book  # each outcome's DID policy: its business hours
        self._batch = max(1, min(settings.batch_size, writer.max_batch))
        self._recordings = recordings or RecordingSettings()
        # Recordings go on the Call as a step of their own, for a writer that takes them so.
        self._recording_step = (
            RecordingStep(self._recordings, writer, clock, lag_s=writer.search_lag_s) if isinstance(writer, RecordingWriter) else None
        )
        self._wake = asyncio.Event()
        self._users: ExtensionDirectory | None = None
        self._users_at = 0.0
        self._paused_until = 0.0
        self._hold_until = 0.0
        self._purged_at = 0.0
        # Every round since the start, for the server's metrics.
        self.totals = FlushSummary()
        # Stuck while rounds deliver nothing and fail; delivering again at the first delivery.
        self.delivering = Condition(logger, "outbox stuck", "outbox delivering again", clock=clock)
        self._store_usable = Condition(logger, "outbox store not usable, deliveries wait", "outbox store usable again", clock=clock)
        self._users_readable = Condition(logger, "cannot read the CRM's users (who answered stays unknown)", "the CRM's users are read again", clock=clock)

    # -- running ----------------------------------------------------------------

    def wake(self) -> None:
        """A new outcome was recorded: look at the queue now (unless paused)."""
        self._wake.set()

    def resume(self) -> None:
        """Try the CRM again now, paused or not (a new token may have been configured)."""
        self._paused_until = 0.0
        self._hold_until = 0.0
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; never raises for CRM or data trouble."""
        await self._outbox.on_thread(self._outbox.release_orphans, self._clock())
        while not stop.is_set():
            wait = await self._step()
            if wait > 0:
                self._wake.clear()
                await first_of(stop, self._wake, timeout=wait)

    async def _step(self) -> float:
        """One round if one is due; returns how long to wait before the next."""
        now = self._clock()
        held = max(self._paused_until, self._hold_until)
        if now < held:
            return held - now
        try:
            result = await self.round()
            await self._purge(now)
            self._store_usable.recovered()
        except OutboxError as exc:  # the shared store is down: said once, tried again each interval
            self._store_usable.failing(str(exc))
            return self._settings.flush_interval_s
        except Exception:  # a bug or a broken disk: log it, keep the worker alive
            logger.exception("outbox round failed")
            return self._settings.flush_interval_s
        if result.paused or result.retry_after:
            return max(self._paused_until, self._hold_until) - self._clock()
        if result.claimed >= self._batch or result.delivered:
            return 0.0
        next_due = await self._outbox.on_thread(self._outbox.next_due)
        if next_due is None:
            return self._settings.flush_interval_s
        return min(self._settings.flush_interval_s, max(0.0, next_due - self._clock()))

    async def flush(self, *, max_seconds: float | None = None) -> FlushSummary:
        """Deliver everything due now (for ``crmroute outbox flush``); stops when paused."""
        summary = FlushSummary()
        await self._outbox.on_thread(self._outbox.release_orphans, self._clock())
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while deadline is None or time.monotonic() < deadline:
            if self._hold_until > self._clock():
                pause = self._hold_until - self._clock()
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                await asyncio.sleep(max(0.0, pause))
                continue
            result = await self.round()
            summary.add(result)
            if result.paused or (not result.claimed):
                break
            if not (result.delivered or result.retry_after or result.claimed >= self._batch or result.deferred):
                break  # only failures: they wait for their back-off
        return summary

    # -- one round --------------------------------------------------------------

    async def round(self) -> RoundResult:
        """Take one batch of due outcomes and try to deliver it."""
        now = self._clock()
        items = await self._outbox.on_thread(self._outbox.claim, now, self._batch, self._settings.lease_s)
        result = RoundResult(claimed=len(items))
        if not items:
            await self._note_pause(result, False)
            return result
        attempts = [_Attempt(item) for item in items]
        wrote = False
        try:
            await self._plan(attempts, now)
            wrote = await self._deliver(attempts)
            wrote = await self._deliver_recordings(attempts) or wrote
        except CrmAuthError as exc:
            result.paused = f"the CRM refused our credentials: {exc}"
        except CrmRateLimited as exc:
            wait = _retry_after(exc, self._settings.backoff_initial_s)
            result.retry_after = wait
            self._hold_until = self._clock() + wait
            _fail_open(attempts, f"rate limited by the CRM: {exc}", retry_at=self._hold_until)
        except CrmError as exc:
            _fail_open(attempts, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: the outcomes stay, the worker lives
            logger.exception("delivering %d outcome(s) failed", len(attempts))
            _fail_open(attempts, f"internal error: {exc!r}")
        finishes = self._finishes(attempts, result)
        await self._outbox.on_thread(self._outbox.finish, finishes, self._clock())
        await self._note_pause(result, wrote)
        self.totals.add(result)
        if result.delivered or result.failed or result.dead or result.paused:
            logger.info(
                "outbox round: %d delivered, %d failed, %d dead, %d deferred%s%s",
                result.delivered, result.failed, result.dead, result.deferred,
                f"; paused: {result.paused}" if result.paused else "",
                f"; first error: {result.error}" if result.error and not result.paused else "",
            )
        self._note_progress(result)
        return result

    def _note_progress(self, result: RoundResult) -> None:
        """The outbox is stuck while its rounds fail without delivering; logged when that starts and ends."""
        if result.delivered:
            self.delivering.recovered()
        elif result.paused or result.failed:
            self.delivering.failing(result.paused or f"{result.failed} outcome(s) failed, first error: {result.error}")

    async def _plan(self, attempts: list[_Attempt], now: float) -> None:
        """Resolve each outcome's CRM context (once) and plan its records."""
        users = await self._extension_directory(now)
        resolved = await self._resolve(attempts, users, now)
        leads_planned: set[str] = set()
        contexts: list[tuple[int, dict[str, Any] | None]] = []
        for attempt in attempts:
            item = attempt.item
            number = item.outcome.caller_e164
            lead = item.writes.get(Step.LEAD)
            started_lead = lead is not None and lead.state in (WriteState.DONE, WriteState.SENT)
            if item.context is not None:
                context = CrmContext.from_dict(item.context)
            elif item.id in resolved:
                context = resolved[item.id]
            else:
                continue  # the lookup failed: the attempt says why
            known = context
            if context.record is None and number and not started_lead:
                context = await self._our_lead(attempt, context)
            policy = self._book.for_did(item.outcome.did)
            attempt.plan = plan_writes(
                item.outcome, context, self._outcomes, self._tz, functools.partial(_task_schedule, policy, users),
                kinds=self._writer.writes, recordings=self._recordings,
                ticket_calls=bool(getattr(self._writer, "logs_ticket_calls", False)),
            )
            attempt.plan += self._recording_write(item, attempt.plan)
            creates_lead = any(w.step == Step.LEAD for w in attempt.plan)
            if attempt.deferred or (creates_lead and not started_lead and number in leads_planned):
                # Another outcome creates this caller's lead: this one waits for
                # it, and is then logged on it.
                attempt.deferred, attempt.plan = True, None
                if item.context is not None:
                    contexts.append((item.id, None))
                continue
            if creates_lead:
                leads_planned.add(number)
                context = replace(context, lead_owner_id=next(w.entry.owner_id for w in attempt.plan if w.step == Step.LEAD))
            if item.context is None or context != known:
                contexts.append((item.id, context.to_dict()))
        if contexts:
            await self._outbox.on_thread(self._outbox.save_contexts, contexts)

    async def _resolve(self, attempts: list[_Attempt], users: ExtensionDirectory, now: float) -> dict[int, CrmContext]:
        """The contexts of the outcomes that have none yet, looked up together (the CRM client bounds the concurrency)."""
        fresh = [attempt for attempt in attempts if attempt.item.context is None]
        answers = await asyncio.gather(
            *(resolve_context(a.item.outcome, self._backend, self._routing, users, now, fallback_owner=self._outcomes.senior_manager_id) for a in fresh),
            return_exceptions=True,
        )
        resolved: dict[int, CrmContext] = {}
        for attempt, answer in zip(fresh, answers):
            if isinstance(answer, (CrmAuthError, CrmRateLimited)):
                raise answer
            if isinstance(answer, CrmError):
                attempt.error, attempt.transient = f"looking up the caller failed: {answer}", True
            elif isinstance(answer, BaseException):
                raise answer
            else:
                resolved[attempt.item.id] = answer
        return resolved

    async def _our_lead(self, attempt: _Attempt, context: CrmContext) -> CrmContext:
        """The lead an earlier outcome created for this unknown caller, if any.

        The CRM's search (or the lookup cache in front of it) may not show a
        lead created seconds ago; the outbox remembers it, so one caller gets
        one lead however often they call.
        """
        number = attempt.item.outcome.caller_e164
        earlier = await self._outbox.on_thread(self._outbox.lead_for_caller, number, attempt.item.id)
        if earlier is None:
            return context
        state, lead_id, owner_id = earlier
        if state is not WriteState.DONE:
            attempt.deferred = True  # that lead's creation is uncertain: wait until it is settled
            return context
        return replace(context, module=WriteKind.LEAD.value, record_id=lead_id, record_name=lead_name(number), owner_id=owner_id)

    async def _deliver(self, attempts: list[_Attempt]) -> bool:
        """Write leads, then calls, then tasks; True once the CRM accepted a request."""
        wrote = False
        for step, kind in _ORDER:
            todo = _writes_to_do(step, attempts)
            if not todo:
                continue
            wrote = await self._settle_uncertain(step, kind, todo) or wrote
            todo = [(a, e) for a, e in todo if a.open and a.item.writes.get(step, _NOT_WRITTEN).state is not WriteState.DONE]
            wrote = await self._write_new(step, kind, todo) or wrote
        return wrote

    def _recording_write(self, item: OutboxItem, plan: list[PlannedWrite]) -> list[PlannedWrite]:
        """The recording step, for an answered call with a recording (or a refused one) and a Call planned."""
        outcome = item.outcome
        call = next((write for write in plan if write.step == Step.CALL), None)
        if self._recording_step is None or call is None or not outcome.answered or not (outcome.recording or outcome.recording_problem):
            return []
        return [PlannedWrite(Step.RECORDING, WriteKind.CALL, call.entry)]

    async def _deliver_recordings(self, attempts: list[_Attempt]) -> bool:
        """The recording step of each outcome whose Call is written (one file at a time); True once the CRM was asked."""
        step = self._recording_step
        asked = False
        # Uploads are large: the round stops starting them well before its lease runs out
        # (another worker would take the outcomes up meanwhile); the rest wait for the next round.
        stop_at = self._clock() + self._settings.lease_s / 2
        for attempt in attempts:
            write = next((w for w in attempt.plan or () if w.step == Step.RECORDING), None)
            call = attempt.item.writes.get(Step.CALL)
            if step is None or write is None or not attempt.open or attempt.complete():
                continue
            if call is None or call.state is not WriteState.DONE or not isinstance(write.entry, CallEntry):
                continue  # the Call first
            if self._clock() >= stop_at:
                _apply_recording(attempt, StepResult(wait_until=self._clock(), waiting="recording: its upload waits for the next round (this one's took long)"))
                continue

            async def mark(state: WriteState, crm_id: str, note: str, attempt: _Attempt = attempt) -> None:
                await self._mark(Step.RECORDING, [(attempt, state, crm_id, note)])

            result = await step.run(attempt.item, write.entry, call.crm_id, mark)
            asked = asked or not result.wait_until
            _apply_recording(attempt, result)
        return asked

    async def _settle_uncertain(self, step: str, kind: WriteKind, todo: list[tuple[_Attempt, Entry]]) -> bool:
        """Look in the CRM for the writes sent before whose answer never came (the process
        died, the connection broke); those found are done. True when the CRM was asked."""
        uncertain = [(a, e) for a, e in todo if (row := a.item.writes.get(step)) is not None and row.state is WriteState.SENT]
        settled_before = self._clock() - self._writer.search_lag_s
        for attempt, _ in uncertain:
            sent_at = attempt.item.writes[step].updated_at
            if sent_at > settled_before:
                # Too recent for the CRM's search to show it: look later, not now.
                attempt.deferred, attempt.retry_at = True, sent_at + self._writer.search_lag_s
        asked = False
        for chunk in chunks([(a, e) for a, e in uncertain if not a.deferred], self._batch):
            found = await self._writer.find_existing(kind, [entry for _, entry in chunk])
            asked = True
            await self._mark(step, [(a, WriteState.DONE, found[e.key], "") for a, e in chunk if e.key in found])
        return asked

    async def _write_new(self, step: str, kind: WriteKind, todo: list[tuple[_Attempt, Entry]]) -> bool:
        """Create the records of ``todo``, a request per chunk, each marked sent first and
        done or rejected by the CRM's answer. True when the CRM was asked."""
        asked = False
        for chunk in chunks(todo, self._batch):
            going = await self._mark_sent(step, chunk)
            if not going:
                continue
            results = await self._create(step, kind, going)
            asked = True
            if len(results) != len(going) or any(r.key != e.key for r, (_, e) in zip(results, going)):
                raise CrmBadResponse(f"{kind.value}: {len(results)} result(s) for {len(going)} record(s)")
            await self._mark(step, [_answered(kind, attempt, result) for (attempt, _), result in zip(going, results)])
        return asked

    async def _create(self, step: str, kind: WriteKind, chunk: list[tuple[_Attempt, Entry]]) -> list[WriteResult]:
        """Create the chunk's records (marked sent); a request refused before anything
        was created (a 429, our credentials) leaves no uncertain write to look for later."""
        try:
            return list(await self._writer.create(kind, [entry for _, entry in chunk]))
        except (CrmRateLimited, CrmAuthError):
            await self._outbox.on_thread(self._outbox.unmark_sent, [(a.item.id, step) for a, _ in chunk])
            for attempt, _ in chunk:
                attempt.item.writes.pop(step, None)
            raise

    async def _mark_sent(self, step: str, chunk: list[tuple[_Attempt, Entry]]) -> list[tuple[_Attempt, Entry]]:
        """Mark the chunk's writes as sent; returns the part that may go.

        A lead goes only if no other outcome of its caller, in this process
        or another working on the same outbox, has one written or under way
        (checked and marked in one transaction); the others wait a round and
        are then logged on that lead.
        """
        if step != Step.LEAD:
            await self._mark(step, [(a, WriteState.SENT, "", "") for a, _ in chunk])
            return chunk
        leads = [(a.item.id, a.item.outcome.caller_e164) for a, _ in chunk]
        refused = await self._outbox.on_thread(self._outbox.claim_leads, leads, self._clock())
        now = self._clock()
        going = []
        for attempt, entry in chunk:
            if attempt.item.id in refused:
                attempt.deferred, attempt.plan = True, None
            else:
                attempt.item.writes[step] = WriteRow(step, WriteState.SENT, "", "", now)
                going.append((attempt, entry))
        return going

    async def _mark(self, step: str, marks: Sequence[tuple[_Attempt, WriteState, str, str]]) -> None:
        if not marks:
            return
        rows = [(a.item.id, step, state, crm_id, error) for a, state, crm_id, error in marks]
        await self._outbox.on_thread(self._outbox.mark_writes, rows, self._clock())
        now = self._clock()
        for attempt, state, crm_id, error in marks:
            attempt.item.writes[step] = WriteRow(step, state, crm_id, error, now)

    def _finishes(self, attempts: list[_Attempt], result: RoundResult) -> list[Finish]:
        now = self._clock()
        finishes = []
        for attempt in attempts:
            item = attempt.item
            idle = OutboxState.FAILED if item.attempts else OutboxState.PENDING
            if attempt.complete():
                finishes.append(Finish(item.id, item.lease_token, OutboxState.DONE))
                result.delivered += 1
            elif attempt.fatal:
                finishes.append(Finish(item.id, item.lease_token, OutboxState.DEAD, attempt.error, now))
                result.dead += 1
                result.error = result.error or attempt.error
            elif result.paused and not attempt.rejected:
                # Not the outcome's fault: it waits, uncounted, for a working token.
                finishes.append(Finish(item.id, item.lease_token, idle, f"paused: {result.paused}", now, counted=False))
            elif attempt.deferred:
                retry_at = attempt.retry_at or now + min(self._settings.flush_interval_s, self._settings.backoff_initial_s)
                waiting = attempt.waiting or "waiting for an earlier write to settle"
                finishes.append(Finish(item.id, item.lease_token, idle, waiting, retry_at, counted=False))
                result.deferred += 1
            elif attempt.rejected and item.rejections + 1 >= self._settings.max_attempts:
                finishes.append(Finish(item.id, item.lease_token, OutboxState.DEAD, attempt.error, now, rejected=True))
                result.dead += 1
                result.refused += 1
                result.error = result.error or attempt.error
            else:
                error = attempt.error or "not every record was written"
                result.refused += attempt.rejected
                result.error = result.error or error
                retry_at = attempt.retry_at or now + self._backoff(item.attempts)
                finishes.append(Finish(item.id, item.lease_token, OutboxState.FAILED, error, retry_at, rejected=attempt.rejected))
                result.failed += 1
        return finishes

    def _backoff(self, attempts: int) -> float:
        """Exponential back-off with jitter: between half and all of initial * 2^attempts, capped."""
        base = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * (2.0 ** min(attempts, 30)))
        return base * (0.5 + 0.5 * self._jitter())

    async def _note_pause(self, result: RoundResult, wrote: bool) -> None:
        """Record a pause, or end one: the queue is paused (and ``outbox status`` says so,
        for every process using the outbox) only while our credentials are refused."""
        if result.paused:
            self._pause(result.paused)
            await self._outbox.on_thread(self._outbox.set_meta, PAUSE_KEY, json.dumps({"reason": result.paused, "since": self._clock()}))
            return
        if await self._outbox.on_thread(self._outbox.get_meta, PAUSE_KEY) is None:
            if wrote:
                self._paused_until = 0.0  # another process may have ended the pause it shared
            return
        if not wrote:
            # Nothing was written this round (nothing due, or all of it waiting):
            # ask the CRM whether it takes our credentials now, rather than waiting for a write.
            try:
                await self._writer.check_access()
            except CrmAuthError as exc:
                self._pause(f"the CRM refused our credentials: {exc}")
                return
            except CrmError:
                return  # the CRM cannot say now; the next round asks again
        self._paused_until = 0.0
        logger.info("outbox resumed: the CRM accepts our credentials again")
        await self._outbox.on_thread(self._outbox.set_meta, PAUSE_KEY, None)

    def _pause(self, reason: str) -> None:
        self._paused_until = self._clock() + self._settings.auth_retry_s
        logger.error("outbox paused, everything kept: %s (next try in %.0f s, or on reload)", reason, self._settings.auth_retry_s)

    async def _extension_directory(self, now: float) -> ExtensionDirectory:
        if self._users is None or now - self._users_at > USERS_TTL_S:
            try:
                users = await self._writer.users()
            except (CrmAuthError, CrmRateLimited):
                raise
            except CrmError as exc:
                self._users_readable.failing(str(exc))  # once, not at every round while the CRM is down
                if self._users is not None:
                    return self._users
                # Not kept: the next round asks again. Nobody is taken for inactive meanwhile.
                return ExtensionDirectory((), self._routing.owner_extensions, known=False)
            self._users = ExtensionDirectory(users, self._routing.owner_extensions)
            self._users_at = now
            self._users_readable.recovered()
        return self._users

    async def _purge(self, now: float) -> None:
        if not self._settings.keep_days or now - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = now
        purged = await self._outbox.on_thread(self._outbox.purge_done, now - self._settings.keep_days * 86400)
        if purged:
            logger.info("outbox: forgot %d delivered outcome(s) older than %d days", purged, self._settings.keep_days)


_NOT_WRITTEN = WriteRow("", WriteState.SENT)


def _task_schedule(policy: Policy, users: ExtensionDirectory, owner_id: str) -> BusinessHours | None:
    """The hours a task's owner works: their own (``owner_hours``, by id or email), else the DID's policy's."""
    user = users.by_id(owner_id)
    own = policy.staff.hours.get(owner_id) or (policy.staff.hours.get(owner_key(user.email)) if user and user.email else None)
    return own or policy.hours


def _writes_to_do(step: str, attempts: list[_Attempt]) -> list[tuple[_Attempt, Entry]]:
    """The entries of ``step`` the open attempts' plans hold and the CRM does not have yet."""
    todo: list[tuple[_Attempt, Entry]] = []
    for attempt in attempts:
        if not attempt.open:
            continue
        row = attempt.item.writes.get(step)
        if row is not None and row.state is WriteState.DONE:
            continue
        todo += [(attempt, _linked(write, attempt.item)) for write in attempt.plan or () if write.step == step]
    return todo


def _answered(kind: WriteKind, attempt: _Attempt, result: WriteResult) -> tuple[_Attempt, WriteState, str, str]:
    """The mark the CRM's answer to one created record gives its write (a refusal also fails the attempt)."""
    if result.ok:
        return attempt, WriteState.DONE, result.record_id, ""
    error = result.error or "the CRM returned no record id"
    attempt.error, attempt.rejected = f"{kind.value}: {error}", True
    return attempt, WriteState.REJECTED, "", error


def _linked(write: PlannedWrite, item: OutboxItem) -> Entry:
    """The entry, linked to the lead this outcome created when it needs one."""
    if not write.links_lead or isinstance(write.entry, LeadEntry):  # a lead is not linked to itself
        return write.entry
    lead = item.writes.get(Step.LEAD)
    if lead is None or lead.state is not WriteState.DONE:
        return write.entry
    return replace(write.entry, record=RecordRef(WriteKind.LEAD.value, lead.crm_id))


def _apply_recording(attempt: _Attempt, result: StepResult) -> None:
    """What the recording step said, on the outcome's attempt."""
    if result.fatal:
        attempt.error, attempt.fatal = result.fatal, True
    elif result.rejected:
        attempt.error, attempt.rejected = result.rejected, True
    elif result.wait_until:
        attempt.deferred, attempt.retry_at, attempt.waiting = True, result.wait_until, result.waiting


def _fail_open(attempts: list[_Attempt], error: str, retry_at: float = 0.0) -> None:
    for attempt in attempts:
        if attempt.open and not attempt.complete():
            attempt.error, attempt.transient, attempt.retry_at = error, True, retry_at


def _retry_after(exc: CrmRateLimited, default: float) -> float:
    """How long the CRM asked us to wait (``default`` when it did not say), within 0.1 s to an hour."""
    seconds = exc.retry_after if exc.retry_after is not None else default
    return min(max(seconds, 0.1), 3600.0)
