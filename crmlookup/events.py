"""Call events a CRM may want while a call happens: ringing (a screen pop), and ended.

A CRM plugin that offers them (``call_events(backend, settings)``) gets one
:class:`CallRinging` once the route decided who rings, and one
:class:`CallEnded` when the hangup handler records the outcome. They are sent
in the background: the call never waits for them, and a failure is only
logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CallRinging:
    """An inbound call that now rings ``extensions``."""

    call_id: str  # Asterisk's unique id of the inbound channel
    caller: str  # E.164 when it could be read, else as Asterisk gave it
    did: str
    extensions: tuple[str, ...]
    owner_id: str = ""


@dataclass(frozen=True)
class CallEnded:
    """An inbound call that is over."""

    call_id: str
    caller: str
    did: str
    extensions: tuple[str, ...]  # who answered, else who it rang (empty when nobody)
    answered: bool
    dial_status: str  # Asterisk's DIALSTATUS, empty when unknown


class CallEvents(Protocol):
    """Where a CRM hears about calls as they happen. Raising CrmError is fine: it is logged."""

    async def ringing(self, call: CallRinging) -> None:
        ...

    async def ended(self, call: CallEnded) -> None:
        ...
