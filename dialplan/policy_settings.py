"""The words and tables of the ``[routing]`` section that the policy compiler reads.

Apart from :mod:`.settings` (which holds ``[routing]`` itself and compiles it
through :mod:`.policy`) so that the compiler depends on these tables, and the
settings on the compiler, never both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hours import BusinessHours

# The rule in ``lookup_order`` that rings whoever last answered this caller.
LAST_AGENT = "LastAgent"
# The rule in ``lookup_order`` that rings the agent of the caller's open Zoho Desk
# ticket (the [zoho_desk] section), asked beside the CRM, not of it.
TICKETS = "Tickets"
# What ``on_unavailable`` and ``on_unmapped`` may list.
FALLBACK_STEPS = ("next_owner", "team", "senior_manager")


@dataclass(frozen=True)
class HoursSettings:
    """``[routing.hours.<name>]``: a weekly schedule in a time zone."""

    time_zone: str = "UTC"
    # Lines like "mon-fri 09:00-18:00", "sat 10:00-14:00", "fri 22:00-02:00".
    open: tuple[str, ...] = ("mon-fri 09:00-18:00",)
    # Whole days closed, ISO dates: "2025-12-25".
    closed_dates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.compile("")  # validate now; errors name the key

    def compile(self, name: str) -> BusinessHours:
        """The schedule, parsed; raises ValueError naming the key."""
        return BusinessHours.parse(name, self.time_zone, self.open, self.closed_dates)


@dataclass(frozen=True)
class TeamSettings:
    """``[routing.teams.<name>]``: a ring group, the fallback when owners cannot take the call."""

    extensions: tuple[str, ...] = ()
    # A schedule from [routing.hours]; empty: always open.
    hours: str = ""
    # Zoho Desk departments (id or name) whose unassigned open tickets ring this team (the Tickets rule).
    departments: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicySettings:
    """``[routing.policies.<name>]``: a policy for the DIDs it lists.

    Every other key is optional: left out, it takes the value of the same key in ``[routing]``.
    """

    dids: tuple[str, ...] = ()
    lookup_order: tuple[str, ...] | None = None
    dial_template: str | None = None
    state_template: str | None = None
    check_availability: bool | None = None
    skip_states: tuple[str, ...] | None = None
    on_unavailable: tuple[str, ...] | None = None
    on_unmapped: tuple[str, ...] | None = None
    team: str | None = None
    senior_manager: str | None = None
    last_agent_max_age_s: int | None = None
    strip_prefixes: tuple[str, ...] | None = None
    add_prefix: str | None = None
    business_hours: str | None = None


# The keys a policy may set; [routing] holds their defaults.
POLICY_KEYS = tuple(name for name in PolicySettings.__dataclass_fields__ if name != "dids")


def owner_key(key: str) -> str:
    """How an owner is keyed in the config maps: emails in lower case, ids as they are."""
    return key.lower() if "@" in key else key
