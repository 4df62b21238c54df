"""Routing policy settings: the ``[routing]`` section of ``crmroute.toml`` and its tables.

These are plain data, read from TOML (the tables a policy is made of are in
:mod:`.policy_settings`). :mod:`.policy` checks them as a whole
(names that refer to each other, extensions against the pattern) and compiles
them into the objects a call is routed with; a value that is wrong raises
ValueError naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crmlookup.phone import is_valid_region
from crmlookup.settings import bounded, check_bounds

from .availability import DEFAULT_SKIP_STATES
from .policy import PolicyBook
from .policy_settings import HoursSettings, PolicySettings, TeamSettings, owner_key

@dataclass(frozen=True)
class RoutingSettings:
    """How a caller's CRM owner becomes a dial target.

    Every field has a default that works with the demo directory. The policy
    keys here (``lookup_order`` ... ``last_agent_max_age_s``) apply to every DID
    no policy in ``policies`` lists.
    """

    # The decision comes back within this many milliseconds, whatever the CRM
    # and the device-state checks do.
    deadline_ms: int = bounded(1500, 10, 60_000)
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
        check_bounds(self)
        if not is_valid_region(self.default_region):
            raise ValueError(f"default_region {self.default_region!r} is not a known region code (e.g. US, GB, ES)")
        # Emails compare case-insensitively; ids exactly.
        object.__setattr__(self, "owner_extensions", {owner_key(k): tuple(v) for k, v in self.owner_extensions.items()})
        object.__setattr__(self, "owner_hours", {owner_key(k): v for k, v in self.owner_hours.items()})
        object.__setattr__(self, "default_region", self.default_region.upper())
        # The one place the whole section is checked, and compiled once: the router and the
        # delivery worker route and plan with this book.
        object.__setattr__(self, "_book", PolicyBook.build(self))

    @property
    def book(self) -> PolicyBook:
        """The section compiled: each DID's policy."""
        book: PolicyBook = self._book  # type: ignore[attr-defined]  # set in __post_init__, not a field
        return book
