"""``AGI(agi://router:4573/outcome,${DID})`` from the hangup handler: record how the call ended.

Reads the channel in one round trip (one GET FULL VARIABLE carrying every
expression, which works on the dead channel of a hangup handler), commits the
outcome to the outbox and returns: the CRM is written later by the sync
worker, never while Asterisk waits.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from dialplan.outcome import CHANNEL_READINGS, InvalidOutcome, outcome_from_channel, reading_expression

from ..errors import AgiCommandError, AgiConnectionClosed, AgiLimitExceeded, AgiProtocolError
from ..session import AgiSession

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger("crmroute.outcome")

# Asterisk's channel can stop answering in these ways; what the headers tell is still recorded.
_READ_FAILURES = (AgiCommandError, AgiConnectionClosed, AgiLimitExceeded, AgiProtocolError)
# Set once the outcome is committed (or could not be): what the dialplan may test.
OUTCOME_VARIABLE = "CRM_OUTCOME"
# What every outcome call reads, in order: fixed by the contract, so built once, not per call.
_READING_NAMES = tuple(CHANNEL_READINGS)
_READING_EXPRESSIONS = tuple(reading_expression(name) for name in _READING_NAMES)


async def read_channel(session: AgiSession) -> tuple[dict[str, str], bool]:
    """The :data:`CHANNEL_READINGS` values, and whether they could all be read."""
    names, expressions = _READING_NAMES, _READING_EXPRESSIONS
    try:
        values = await session.get_full_variables(expressions)
        if values is None:  # a value held the separator: one expression at a time
            values = [await session.get_full_variable(expression) or "" for expression in expressions]
    except _READ_FAILURES as exc:
        logger.warning("outcome of %s: channel not readable (%s); recording what the headers tell", session.env.unique_id, exc)
        return {}, False
    return dict(zip(names, values)), True


def dialled_number(session: AgiSession) -> str:
    """The DID: the first AGI argument, else the DNID when Asterisk knows it.

    In a hangup handler the extension is the handler's own (``s``), so it is
    never taken for the DID.
    """
    if session.arguments:
        return session.arguments[0]
    dnid = session.env.dnid
    return "" if dnid.lower() in ("", "unknown") else dnid


async def record_outcome(session: AgiSession, app: App) -> dict[str, str]:
    """Record this call's outcome in the outbox (once per call), then tell the dialplan.

    ``CRM_OUTCOME`` is set after the commit: ``recorded`` when the outcome is
    on disk (now, or by an earlier attempt for this call), ``failed`` when it
    is not (kept in memory until the outbox can take it, or not recordable).
    """
    env = session.env
    readings, complete = await read_channel(session)
    ended_at = time.time()
    did = dialled_number(session)
    try:
        outcome = outcome_from_channel(
            call_id=env.unique_id,
            caller=env.caller_number,
            readings=readings,
            ended_at=ended_at,
            region=app.config.routing.default_region,
            did=did,
            channel=env.channel,
            complete=complete,
            # Read as route read it: the DID's policy may rewrite the trunk's prefixes.
            number=app.router.book.for_did(did).rewrite.apply(env.caller_number),
            recordings_dir=app.config.recordings.directory,
        )
    except InvalidOutcome as exc:
        logger.warning("outcome not recorded: %s (peer=%s)", exc, session.peer)
        await tell_dialplan(session, committed=False)
        return {"outcome": "IGNORED", "reason": str(exc)}
    recording = await app.record_outcome(outcome, ended_at)
    app.call_ended(outcome)  # in the background: the CRM's screen pop closes
    await tell_dialplan(session, committed=recording.committed)
    return {
        "caller": outcome.caller_e164 or outcome.caller,
        "outcome": recording.value,
        "dialstatus": outcome.dial_status,
        "answered_by": outcome.answered_extension,
        "route": outcome.route.status,
    }


async def tell_dialplan(session: AgiSession, *, committed: bool) -> None:
    """``CRM_OUTCOME=recorded|failed``; a channel that is gone by now changes nothing."""
    try:
        await session.set_variable(OUTCOME_VARIABLE, "recorded" if committed else "failed")
    except _READ_FAILURES as exc:
        logger.debug("CRM_OUTCOME not set for %s: %s", session.env.unique_id, exc)
