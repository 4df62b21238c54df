"""The screen pop: ``POST /api/v5/telephony/call/event`` while the phone rings, and when it ends.

``type=in`` with the codes being rung makes retailCRM show the caller (and
their customer card) to those managers; ``type=hangup`` with the
``hangupStatus`` closes it. ``callExternalId`` is the Asterisk unique id, the
same as the call history's ``externalId``.
"""

from __future__ import annotations

from typing import Any

from ..events import CallEnded, CallRinging
from .api import RetailCrmApi

# retailCRM's hangup statuses (CallEventHangupStatus in its API clients).
HANGUP_STATUS_OF_DIAL_STATUS = {
    "ANSWER": "answered",
    "BUSY": "busy",
    "CANCEL": "cancel",
    "NOANSWER": "no answered",
    "CHANUNAVAIL": "failed",
    "CONGESTION": "failed",
}


def hangup_status(call: CallEnded) -> str:
    if call.answered:
        return "answered"
    return HANGUP_STATUS_OF_DIAL_STATUS.get(call.dial_status.upper(), "no answered")


class RetailCrmCallEvents:
    """Sends call events through the lookup backend's API client."""

    def __init__(self, api: RetailCrmApi, site: str = ""):
        self._api = api
        self._site = site

    async def ringing(self, call: CallRinging) -> None:
        await self._send({"type": "in", "phone": call.caller, "codes": list(call.extensions)}, call.call_id, call.did)

    async def ended(self, call: CallEnded) -> None:
        event = {"type": "hangup", "phone": call.caller, "codes": list(call.extensions), "hangupStatus": hangup_status(call)}
        await self._send(event, call.call_id, call.did)

    async def _send(self, event: dict[str, Any], call_id: str, did: str) -> None:
        event["callExternalId"] = call_id
        if did:
            event["externalPhone"] = did
        if self._site:
            event["site"] = self._site
        await self._api.post("/telephony/call/event", {"event": event}, purpose="event")
