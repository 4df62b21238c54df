"""What the routing policy knows about an inbound call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InboundCall:
    """An inbound call as the policy sees it: no AGI, no channel internals."""

    caller: str  # the caller ID number, as Asterisk gave it
    did: str = ""  # the dialled number (DID)
    caller_name: str = ""
    unique_id: str = ""
