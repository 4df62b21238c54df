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
    # The explanation, step by step, for ``crmroute lookup --explain``.
    steps: list[str] = field(default_factory=list)

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
            "CRM_CALLER_NAME": match.name if match else "",
            "CRM_LOOKUP_MS": str(self.lookup_ms),
            "CRM_ROUTE_REASON": self.reason,
        }


def fallback_variables(status: RouteStatus, reason: str) -> dict[str, str]:
    """The contract for a call we could not route at all (bad request, overload)."""
    return RouteDecision(status=status, reason=reason).channel_variables()
