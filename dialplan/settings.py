"""Routing policy settings: the ``[routing]`` section of ``crmroute.toml`` and its tables.

These are plain data, read from TOML. :mod:`.policy` checks them as a whole
(names that refer to each other, extensions against the pattern) and compiles
them into the objects a call is routed with; a value that is wrong raises
ValueError naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crmlookup.phone import is_valid_region

from .availability import DEFAULT_SKIP_STATES
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


@dataclass(frozen=True)
class RoutingSettings:
    """How a caller's CRM owner becomes a dial target.

    Every field has a default that works with the demo directory. The policy
    keys here (``lookup_order`` ... ``last_agent_max_age_s``) apply to every DID
    no policy in ``policies`` lists.
    """

    # The decision comes back within this many milliseconds, whatever the CRM
    # and the device-state checks do.
    deadline_ms: int = 1500
    # Region (ISO 3166 code) for caller IDs without a country code.
    default_region: str = "US"
    # Rules in order, first hit rings: CRM modules, LastAgent, and Tickets (Zoho Desk).
    lookup_order: tuple[str, ...] = ("Leads", "Deals", "Contacts", "Accounts")
    # How an extension becomes a dial string; ``{ext}`` is replaced.
    dial_template: str = "PJSIP/{ext}"
    # How an extension's state is asked; empty: derived from dial_template.
    state_template: str = ""
    # Ask Asterisk for each candidate phone's state before ringing it.
    check_availability: bool = True
    # Device states that pass a phone over.
    skip_states: tuple[str, ...] = DEFAULT_SKIP_STATES
    # When the owner's phones are busy, offline or out of hours: what rings next.
    on_unavailable: tuple[str, ...] = ("next_owner", "team")
    # When the owner has no extension (or the record has no owner): what rings instead.
    on_unmapped: tuple[str, ...] = ("senior_manager",)
    # The team (from ``teams``) the "team" fallback rings; empty: none.
    team: str = ""
    # The owner key (id or email in ``owner_extensions``) the "senior_manager" fallback rings.
    senior_manager: str = ""
    # The LastAgent rule looks back this far.
    last_agent_max_age_s: int = 30 * 24 * 3600
    # Caller-number rewriting before it is read (see dialplan.rewrite): prefixes
    # taken off (the longest that matches, once), then a prefix put in front.
    strip_prefixes: tuple[str, ...] = ()
    add_prefix: str = ""
    # A schedule from ``hours`` for everyone who has none of their own
    # (owner_hours, a team's hours): outside it they are passed over, and a
    # task from a missed call is due in it. Empty: always open.
    business_hours: str = ""
    # Only extensions matching this (whole) pattern are ever dialled.
    extension_pattern: str = r"[0-9A-Za-z_-]{1,32}"
    # Owner id or email -> extensions; wins over extensions the CRM knows.
    owner_extensions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Owner id or email -> a schedule name from ``hours``; outside it the owner is passed over.
    owner_hours: dict[str, str] = field(default_factory=dict)
    teams: dict[str, TeamSettings] = field(default_factory=dict)
    hours: dict[str, HoursSettings] = field(default_factory=dict)
    policies: dict[str, PolicySettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .policy import PolicyBook  # the one place the whole section is checked

        if not 10 <= self.deadline_ms <= 60_000:
            raise ValueError(f"deadline_ms must be between 10 and 60000, got {self.deadline_ms}")
        if not is_valid_region(self.default_region):
            raise ValueError(f"default_region {self.default_region!r} is not a known region code (e.g. US, GB, ES)")
        # Emails compare case-insensitively; ids exactly.
        object.__setattr__(self, "owner_extensions", {owner_key(k): tuple(v) for k, v in self.owner_extensions.items()})
        object.__setattr__(self, "owner_hours", {owner_key(k): v for k, v in self.owner_hours.items()})
        object.__setattr__(self, "default_region", self.default_region.upper())
        PolicyBook.build(self)


def owner_key(key: str) -> str:
    """How an owner is keyed in the config maps: emails in lower case, ids as they are."""
    return key.lower() if "@" in key else key
