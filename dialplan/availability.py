"""Can a phone take a call now? Device states, asked of Asterisk during the call.

The router does not speak AGI: it receives a :class:`DeviceStateProbe` for each
call. The route handler implements it over the call's own AGI session
(``GET FULL VARIABLE ${DEVICE_STATE(PJSIP/101)}``, one round trip per device);
``crmroute lookup`` has no channel to ask and uses :class:`NoDeviceStates` or
:class:`FixedDeviceStates`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Protocol

from crmlookup.errors import CrmrouteError

# What DEVICE_STATE() and EXTENSION_STATE() answer (Asterisk 22: func_devstate.c,
# func_extstate.c). HOLDINUSE comes only from EXTENSION_STATE.
DEVICE_STATES = (
    "NOT_INUSE",
    "INUSE",
    "BUSY",
    "INVALID",
    "UNAVAILABLE",
    "RINGING",
    "RINGINUSE",
    "ONHOLD",
    "HOLDINUSE",
    "UNKNOWN",
)
# A phone in any of these states is passed over. RINGINUSE and HOLDINUSE are
# "in use" too; UNKNOWN is not here: Asterisk says UNKNOWN for devices it has no
# state for, and such a phone may well answer.
DEFAULT_SKIP_STATES = ("UNAVAILABLE", "INVALID", "INUSE", "BUSY", "RINGING", "RINGINUSE", "ONHOLD", "HOLDINUSE")

STATE_FUNCTIONS = ("DEVICE_STATE", "EXTENSION_STATE")
_STATE_TEMPLATE = re.compile(r"(DEVICE_STATE|EXTENSION_STATE)\(([A-Za-z0-9_.@/:-]*\{ext\}[A-Za-z0-9_.@/:-]*)\)")


class DeviceStateUnavailable(CrmrouteError):
    """The probe cannot ask (the caller hung up, no Asterisk channel, Asterisk refused)."""


@dataclass(frozen=True)
class StateQuery:
    """One question to Asterisk: the state of the phone behind ``extension``."""

    extension: str
    function: str  # DEVICE_STATE or EXTENSION_STATE
    argument: str  # PJSIP/101, or 101@internal

    @property
    def expression(self) -> str:
        """``${DEVICE_STATE(PJSIP/101)}``: what GET FULL VARIABLE evaluates."""
        return "${%s(%s)}" % (self.function, self.argument)

    def __str__(self) -> str:
        return f"{self.function}({self.argument})"


class DeviceStateProbe(Protocol):
    """Answers device-state questions for one call."""

    async def state_of(self, query: StateQuery) -> str:
        """The state Asterisk reports (one of :data:`DEVICE_STATES`, ideally).

        Raises :class:`DeviceStateUnavailable` when it cannot ask at all.
        """
        ...


class NoDeviceStates:
    """A probe for when nobody can be asked; every question says why."""

    def __init__(self, reason: str):
        self.reason = reason

    async def state_of(self, query: StateQuery) -> str:
        raise DeviceStateUnavailable(self.reason)


class FixedDeviceStates:
    """States given up front, by extension or device (``101`` or ``PJSIP/101``): for trying a policy offline."""

    def __init__(self, states: Mapping[str, str]):
        self._states = {key: value.upper() for key, value in states.items()}

    async def state_of(self, query: StateQuery) -> str:
        return self._states.get(query.argument) or self._states.get(query.extension) or "UNKNOWN"


def read_state(reply: str | None) -> str:
    """A reply as a known state; anything else (empty, garbage) is ``UNKNOWN``."""
    state = (reply or "").strip().upper()
    return state if state in DEVICE_STATES else "UNKNOWN"


class StateTemplate:
    """How an extension becomes a device-state question, e.g. ``DEVICE_STATE(PJSIP/{ext})``."""

    def __init__(self, template: str):
        match = _STATE_TEMPLATE.fullmatch(template)
        if match is None or template.count("{ext}") != 1:
            raise ValueError(
                f"{template!r} must be like 'DEVICE_STATE(PJSIP/{{ext}})' or 'EXTENSION_STATE({{ext}}@context)' "
                "(one {ext}; letters, digits, _ . @ / : - only)"
            )
        self.template = template
        self.function = match[1]
        self._argument = match[2]

    @classmethod
    def for_dial_template(cls, dial_template: str) -> StateTemplate:
        """The natural question for a dial template.

        ``PJSIP/{ext}`` -> ``DEVICE_STATE(PJSIP/{ext})``. A Local channel's own
        device state is always NOT_INUSE, so ``Local/{ext}@ctx`` asks the hint
        instead: ``EXTENSION_STATE({ext}@ctx)`` (an extension without a hint
        answers UNKNOWN, which rings).
        """
        if dial_template.startswith("Local/"):
            extension_at_context = dial_template[len("Local/"):].split("/", 1)[0]  # drop /n, /j options
            return cls(f"EXTENSION_STATE({extension_at_context})")
        return cls(f"DEVICE_STATE({dial_template})")

    def query(self, extension: str) -> StateQuery:
        """The question for one (already validated) extension."""
        return StateQuery(extension, self.function, self._argument.replace("{ext}", extension))
