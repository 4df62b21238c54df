"""What happened to a call: the outcome the hangup handler records.

The ``outcome`` entry point reads a handful of channel variables (what
``Dial``, ``Queue`` and ``route`` left on the inbound channel) and turns them
into a :class:`CallOutcome` here. Asterisk values are hostile input like any
other: a number that does not parse is treated as missing, never trusted.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from crmlookup.phone import InvalidNumber, normalise
from crmlookup.errors import CrmrouteError

from .recordings import DEFAULT_DIRECTORY, MAX_NAME_LENGTH, RecordingRefused, recording_name

# What the handler reads, by our name: one ``${...}`` expression each, all sent
# in a single GET FULL VARIABLE. Each is cut to a bounded length by Asterisk
# itself (``${X:0:64}``) so the reply line stays short whatever the values.
READ_LIMIT = 64
CHANNEL_READINGS: dict[str, str] = {
    "dial_status": "DIALSTATUS",  # ANSWER, NOANSWER, BUSY, CANCEL, CHANUNAVAIL, CONGESTION...
    "answered_ms": "ANSWEREDTIME_MS",  # talk time of an answered Dial (Asterisk 20+)
    "answered_s": "ANSWEREDTIME",  # the same in whole seconds (older releases)
    "dialed_ms": "DIALEDTIME_MS",
    "peer_number": "DIALEDPEERNUMBER",  # what Dial dialled for the channel that answered: 101
    "member_interface": "MEMBERINTERFACE",  # Queue with setinterfacevar=yes: PJSIP/102
    "answered_by": "CRM_ANSWERED_BY",  # set by a custom dialplan: the extension that answered
    "linked_id": "CHANNEL(linkedid)",
    "cdr_start": "CDR(start,u)",  # epoch seconds the channel was created
    "cdr_billsec": "CDR(billsec,f)",  # seconds since the answer (a Queue leaves no ANSWEREDTIME)
    "route_status": "CRM_ROUTE_STATUS",
    "owner_id": "CRM_OWNER_ID",
    "module": "CRM_MODULE",
    "record_id": "CRM_RECORD_ID",
    "route_extension": "CRM_EXTENSION",
    "record_name": "CRM_CALLER_NAME",
    "recording_url": "CRM_RECORDING_URL",  # set by the dialplan when it records calls: where the recording is served
    "recording": "CRM_RECORDING",  # set by the dialplan when MixMonitor records the call: the file's name
}
# Readings that need more than READ_LIMIT characters (a longer recording name is refused, not cut).
READ_LIMITS = {"recording_url": 256, "recording": MAX_NAME_LENGTH + 1}


def reading_expression(name: str) -> str:
    """``${DIALSTATUS:0:64}`` for the reading ``dial_status``."""
    return "${" + CHANNEL_READINGS[name] + f":0:{READ_LIMITS.get(name, READ_LIMIT)}" + "}"


# An extension we keep for the record: the safe dial alphabet, nothing else.
_EXTENSION = re.compile(r"[0-9A-Za-z_.+*#-]{1,64}")
_CALL_ID = re.compile(r"[0-9A-Za-z_.:@-]{1,150}")
# A recording's address we pass on: http(s), no spaces, quotes, brackets or control characters.
_RECORDING_URL = re.compile(r"https?://[^\s\"'<>\\`{}|^\x00-\x1f\x7f]{1,248}")
_EPOCH = re.compile(r"\d{9,11}(\.\d{1,6})?")
# A caller ID is kept to this many characters (it comes from the network).
MAX_CALLER_LENGTH = 128
# A channel older than this is not the one we are looking at: distrust the reading.
_MAX_CALL_SECONDS = 24 * 3600


class InvalidOutcome(CrmrouteError, ValueError):
    """The headers do not identify a call (no usable unique id)."""


@dataclass(frozen=True)
class RouteSnapshot:
    """The ``CRM_*`` variables ``route`` left on the channel, if it got to set them."""

    status: str = ""  # empty: route never answered (caller hung up, server down)
    owner_id: str = ""
    module: str = ""
    record_id: str = ""
    extension: str = ""
    record_name: str = ""

    @property
    def has_record(self) -> bool:
        return bool(self.module and self.record_id)


@dataclass(frozen=True)
class CallOutcome:
    """One finished call, as recorded in the outbox (times are epoch seconds, UTC)."""

    call_id: str  # the inbound channel's unique id: one outcome per call
    caller: str  # the caller ID as Asterisk gave it
    caller_e164: str  # normalised, or empty (withheld, not a number)
    ended_at: float
    started_at: float
    answered: bool
    answered_extension: str = ""  # who answered, when we can tell
    talk_seconds: int = 0  # never 0 for an answered call
    dial_status: str = ""
    did: str = ""
    linked_id: str = ""
    channel: str = ""
    direction: str = "inbound"
    route: RouteSnapshot = field(default_factory=RouteSnapshot)
    # False when the channel could not be read (the outcome then says so).
    complete: bool = True
    # Where the call's recording is served (CRM_RECORDING_URL), when the dialplan said.
    recording_url: str = ""
    # The recording's file name inside recordings.directory (CRM_RECORDING), when the dialplan said.
    recording: str = ""
    # Why CRM_RECORDING was refused (outside the directory, "..", control characters); the file is never read then.
    recording_problem: str = ""

    @property
    def answered_at(self) -> float | None:
        return self.ended_at - self.talk_seconds if self.answered else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallOutcome:
        values = dict(data)
        values["route"] = RouteSnapshot(**values.get("route", {}))
        return cls(**values)


def extension_of(interface: str) -> str:
    """``101`` from ``PJSIP/101``, ``Local/101@agents/n``, ``101@ctx`` or ``101``; empty if unsafe."""
    text = interface.strip()
    if "/" in text:
        text = text.split("/", 2)[1]
    text = text.split("@", 1)[0]
    return text if _EXTENSION.fullmatch(text) else ""


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _talk_seconds(readings: Mapping[str, str]) -> float:
    millis = _number(readings.get("answered_ms", ""))
    if millis is not None and millis / 1000 <= _MAX_CALL_SECONDS:
        return millis / 1000
    for name in ("answered_s", "cdr_billsec"):
        value = _number(readings.get(name, ""))
        if value is not None and value <= _MAX_CALL_SECONDS:
            return value
    return 0.0


def _started_at(readings: Mapping[str, str], call_id: str, ended_at: float) -> float:
    """When the channel was created: the CDR start, else the unique id's timestamp, else the end."""
    candidates = [readings.get("cdr_start", "")]
    # Asterisk's default unique ids are "<epoch>.<sequence>".
    candidates.append(call_id.rsplit("-", 1)[-1].split(".", 1)[0])
    for text in candidates:
        if _EPOCH.fullmatch(text.strip()):
            value = float(text)
            if ended_at - _MAX_CALL_SECONDS <= value <= ended_at:
                return value
    dialed = _number(readings.get("dialed_ms", ""))
    if dialed is not None and dialed / 1000 <= _MAX_CALL_SECONDS:
        return ended_at - dialed / 1000
    return ended_at


def outcome_from_channel(
    *,
    call_id: str,
    caller: str,
    readings: Mapping[str, str],
    ended_at: float,
    region: str,
    did: str = "",
    channel: str = "",
    complete: bool = True,
    number: str | None = None,
    recordings_dir: str = DEFAULT_DIRECTORY,
) -> CallOutcome:
    """Build the outcome from the headers and the :data:`CHANNEL_READINGS` values.

    ``number`` is the caller's number as the DID's routing policy reads it (its
    prefixes rewritten); without it, ``caller`` as sent. ``recordings_dir``:
    the folder a ``CRM_RECORDING`` name must be inside. Raises
    :class:`InvalidOutcome` when ``call_id`` cannot identify a call.
    """
    call_id = call_id.strip()
    if not _CALL_ID.fullmatch(call_id):
        raise InvalidOutcome(f"not a channel unique id: {call_id[:40]!r}")

    def get(name: str) -> str:
        return readings.get(name, "").strip()

    dial_status = get("dial_status").upper()
    member = extension_of(get("member_interface"))
    explicit = extension_of(get("answered_by"))
    dialled = extension_of(get("peer_number")) if dial_status == "ANSWER" else ""
    answered = bool(explicit or member or dial_status == "ANSWER")
    talk = int(_talk_seconds(readings) + 0.5) if answered else 0
    try:
        e164 = normalise(caller if number is None else number, region).e164
    except InvalidNumber:
        e164 = ""
    recording, recording_problem = _recording(readings.get("recording", ""), recordings_dir)
    route = RouteSnapshot(
        status=get("route_status").upper(),
        owner_id=get("owner_id"),
        module=get("module"),
        record_id=get("record_id"),
        extension=extension_of(get("route_extension")),
        record_name=get("record_name"),
    )
    return CallOutcome(
        call_id=call_id,
        caller=caller[:MAX_CALLER_LENGTH],
        caller_e164=e164,
        ended_at=ended_at,
        started_at=_started_at(readings, call_id, ended_at),
        answered=answered,
        answered_extension=explicit or member or dialled,
        # A call that was answered lasted at least a second, whatever the clock said.
        talk_seconds=max(1, talk) if answered else 0,
        dial_status=dial_status[:20],
        did=did[:64],
        linked_id=get("linked_id") if _CALL_ID.fullmatch(get("linked_id")) else "",
        channel=channel[:128],
        route=route,
        complete=complete,
        recording_url=get("recording_url") if _RECORDING_URL.fullmatch(get("recording_url")) else "",
        recording=recording,
        recording_problem=recording_problem,
    )


def _recording(value: str, directory: str) -> tuple[str, str]:
    """(the checked name, "") or ("", why it was refused); both empty when CRM_RECORDING is unset."""
    if not value.strip():
        return "", ""
    try:
        return recording_name(value, directory), ""
    except RecordingRefused as exc:
        return "", f"CRM_RECORDING refused: {exc}"
