"""``AGI(agi://router:4573/outcome,${DID})`` from the hangup handler: record how the call ended.

Reads the channel in one round trip (one GET FULL VARIABLE carrying every
expression, which works on the dead channel of a hangup handler), commits the
outcome to the outbox and returns: the CRM is written later by the sync
worker, never while Asterisk waits.
"""

from __future__ import annotations

import json
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


async def read_channel(session: AgiSession) -> tuple[dict[str, str], bool]:
    """The :data:`CHANNEL_READINGS` values, and whether they could all be read."""
    names = list(CHANNEL_READINGS)
    expressions = [reading_expression(name) for name in names]
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
    """Record this call's outcome in the outbox (once per call) and return at once."""
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
        )
    except InvalidOutcome as exc:
        logger.warning("outcome not recorded: %s (peer=%s)", exc, session.peer)
        return {"outcome": "IGNORED", "reason": str(exc)}
    # Loaded with the first outcome: a process AGI that routes a call never needs the outbox.
    from dialplan.outbox import OutboxError

    try:
        new = await app.outbox.record(outcome, ended_at)
    except OutboxError as exc:
        # The one place an outcome can be lost: say so loudly, with everything
        # needed to enter it by hand.
        logger.error("outcome NOT recorded: %s; outcome=%s", exc, json.dumps(outcome.to_dict(), ensure_ascii=False))
        return {"outcome": "LOST", "reason": str(exc)}
    if new:
        app.outcome_recorded()
    return {
        "caller": outcome.caller_e164 or outcome.caller,
        "outcome": "recorded" if new else "duplicate",
        "dialstatus": outcome.dial_status,
        "answered_by": outcome.answered_extension,
        "route": outcome.route.status,
    }
