"""``AGI(agi://router:4573/route)``: decide where an inbound call goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dialplan import DeviceStateUnavailable, InboundCall, NoDeviceStates, RouteDecision, StateQuery

from ..errors import AgiConnectionClosed, AgiError, AgiLimitExceeded
from ..session import AgiSession

if TYPE_CHECKING:
    from ..app import App


def inbound_call(session: AgiSession) -> InboundCall:
    """The call as the routing policy sees it.

    The DID is the first AGI argument when the dialplan passes one
    (``AGI(agi://host/route,${EXTEN})``), else what the headers say.
    """
    env = session.env
    did = session.arguments[0] if session.arguments else env.did
    return InboundCall(caller=env.caller_number, did=did, caller_name=env.caller_id_name, unique_id=env.unique_id)


class ChannelDeviceStates:
    """Device states asked over the call's own AGI session: one ``GET FULL VARIABLE`` each.

    The router may stop waiting for an answer when its deadline passes; the
    session still reads that reply before it writes the next command (see
    :mod:`..connection`), so the contract's reply is its own.
    """

    def __init__(self, session: AgiSession):
        self._session = session

    async def state_of(self, query: StateQuery) -> str:
        if self._session.hung_up:
            raise DeviceStateUnavailable("caller hung up")
        try:
            return await self._session.get_full_variable(query.expression) or "UNKNOWN"
        except (AgiConnectionClosed, AgiLimitExceeded):
            raise  # the session itself is over: nothing more can be set
        except AgiError as exc:  # 510/511/520 or an unreadable reply: route without states
            raise DeviceStateUnavailable(f"Asterisk refused {query}: {exc}") from None


async def route_call(session: AgiSession, app: App) -> dict[str, str]:
    """Set every ``CRM_*`` variable of the dialplan contract for this call.

    The decision comes back within the routing deadline, device-state checks
    included; if the caller already hung up they are skipped. The variables are
    set even then (Asterisk allows it on a dead channel, and the hangup
    handler's ``outcome`` call reads them).
    """
    call = inbound_call(session)
    # Asking would be pointless once the caller hung up.
    probe = NoDeviceStates("caller hung up") if session.hung_up else ChannelDeviceStates(session)
    decision = await app.router.decide(call, probe)
    await session.set_variables(decision.channel_variables())
    # The screen pop goes after the answer, in the background: the call never waits for it.
    app.call_ringing(call, decision)
    return route_log_fields(call, decision)


def route_log_fields(call: InboundCall, decision: RouteDecision) -> dict[str, str]:
    """What the call's log line says: the caller as normalised (so one grep finds every
    form of a number; ``caller_raw`` when Asterisk sent another), who owns them, and
    whether the answer came from the cache or a lookup."""
    owner = decision.owner
    fields = {"caller": decision.normalised_number or call.caller}
    if decision.normalised_number and decision.normalised_number != call.caller:
        fields["caller_raw"] = call.caller
    fields.update(
        did=call.did,
        policy=decision.policy,
        status=decision.status.value,
        target=decision.target,
        owner=owner.id if owner else "",
        owner_name=owner.name if owner else "",
        owner_email=owner.email if owner else "",
        source=decision.source,
        mirror_age=f"{decision.source_age_s:.0f}s" if decision.source_age_s is not None else "",
        reason=decision.reason,
        chain=" | ".join(decision.chain),
    )
    return fields
