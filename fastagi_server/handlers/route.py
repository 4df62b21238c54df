"""``AGI(agi://router:4573/route)``: decide where an inbound call goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dialplan import InboundCall

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


async def route_call(session: AgiSession, app: App) -> dict[str, str]:
    """Set every ``CRM_*`` variable of the dialplan contract for this call.

    The decision comes back within the routing deadline; if the caller hung up
    meanwhile the variables are still set (Asterisk allows it on a dead channel,
    and the hangup handler's ``outcome`` call reads them).
    """
    call = inbound_call(session)
    decision = await app.router.decide(call)
    await session.set_variables(decision.channel_variables())
    return {"did": call.did, "status": decision.status.value, "target": decision.target, "reason": decision.reason}
