"""A routing decision and the channel variables it becomes (the dialplan contract)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from crmlookup.records import Match, Owner


class RouteStatus(str, enum.Enum):
    """``CRM_ROUTE_STATUS``: what the dialplan branches on."""

    OWNER = "OWNER"  # one owner, mapped: dial CRM_TARGET
    SHARED = "SHARED"  # several users ring together: dial CRM_TARGET
    NOMATCH = "NOMATCH"  # caller unknown: the normal queue
    UNMAPPED = "UNMAPPED"  # owner found, no extension
    TIMEOUT = "TIMEOUT"  # the deadline passed before the CRM answered
    ERROR = "ERROR"  # the CRM failed (or the request was bad) and nothing was cached


# Every route sets all of these, empty where unknown, so the dialplan never
# reads a value left over from an earlier AGI call.
CONTRACT_VARIABLES = (
    "CRM_ROUTE_STATUS",
    "CRM_TARGET",
    "CRM_EXTENSION",
    "CRM_OWNER_ID",
    "CRM_OWNER_NAME",
    "CRM_OWNER_EMAIL",
    "CRM_MODULE",
    "CRM_RECORD_ID",
    "CRM_CALLER_NAME",
    "CRM_LOOKUP_MS",
    "CRM_ROUTE_REASON",
)


# CRM_ROUTE_REASON is cut to this many characters; the whole chain is in the
# log line and ``crmroute lookup --explain``.
MAX_REASON_CHARS = 200


@dataclass
class RouteDecision:
    """Where a call goes and why."""

    status: RouteStatus
    reason: str = ""
    target: str = ""
    extensions: list[str] = field(default_factory=list)
    match: Match | None = None
    normalised_number: str = ""
    lookup_ms: int = 0
    from_cache: bool = False
    # Where the CRM's answer came from, for the log line and --explain: "directory",
    # "mirror", "live" (the CRM's API), "cache", "stale" (an expired cache entry), or
    # empty (nothing asked); for a mirror, how old its copy was (seconds).
    source: str = ""
    source_age_s: float | None = None
    # The explanation, step by step, for ``crmroute lookup --explain``.
    steps: list[str] = field(default_factory=list)
    # The policy that routed the call, and the rule whose candidate rings
    # (a CRM module, LastAgent, team, senior_manager; empty when no one rings).
    policy: str = ""
    rule: str = ""
    # Every candidate considered and what became of it, for the log line.
    chain: list[str] = field(default_factory=list)
    # The device states Asterisk reported, by extension.
    device_states: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> Owner | None:
        return self.match.owner if self.match else None

    def channel_variables(self) -> dict[str, str]:
        """The ``CRM_*`` variables, every one of them, in contract order."""
        owner = self.owner
        match = self.match
        return {
            "CRM_ROUTE_STATUS": self.status.value,
            "CRM_TARGET": self.target,
            "CRM_EXTENSION": self.extensions[0] if self.extensions else "",
            "CRM_OWNER_ID": owner.id if owner else "",
            "CRM_OWNER_NAME": owner.name if owner else "",
            "CRM_OWNER_EMAIL": owner.email if owner else "",
            "CRM_MODULE": match.module if match else "",
            "CRM_RECORD_ID": match.record_id if match else "",
            "CRM_CALLER_NAME": match.caller_name if match else "",
            "CRM_LOOKUP_MS": str(self.lookup_ms),
            "CRM_ROUTE_REASON": self.reason,
        }


class Trace:
    """The explanation of a decision as it is made.

    ``step`` is detail for --explain; ``link`` is a candidate's fate, kept for
    the log line too; ``note`` adds a few words to CRM_ROUTE_REASON.

    ``explain=False`` keeps no steps: where nothing reads them (the server, the
    classic AGI: the log line and the channel read the chain and the reason
    only) they are not kept, and callers skip formatting them (``if trace.explain``).
    """

    def __init__(self, explain: bool = True) -> None:
        self.explain = explain
        self.steps: list[str] = []
        self.chain: list[str] = []
        self.notes: list[str] = []

    def step(self, text: str) -> None:
        if self.explain:
            self.steps.append(text)

    def link(self, text: str, note: str = "") -> None:
        if self.explain:
            self.steps.append(text)
        self.chain.append(text)
        if note:
            self.note(note)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def reason(self) -> str:
        """The notes, short enough for a channel variable."""
        text = "; ".join(self.notes)
        return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def fallback_variables(status: RouteStatus, reason: str) -> dict[str, str]:
    """The contract for a call we could not route at all (bad request, overload)."""
    return RouteDecision(status=status, reason=reason).channel_variables()
