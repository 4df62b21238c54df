"""What a CRM lookup returns: owners and matched records."""

from __future__ import annotations

from dataclasses import dataclass, field

# The CRM modules a lookup can match, by their Zoho names (the local directory
# uses the same names so one lookup order serves every backend).
MODULES = ("Leads", "Deals", "Contacts", "Accounts")


@dataclass(frozen=True, slots=True)
class Owner:
    """The CRM user responsible for a record."""

    id: str
    name: str = ""
    email: str = ""
    # Extensions the CRM itself knows for this user (the local directory's
    # users table, a Zoho custom field). The routing policy may override them.
    extensions: tuple[str, ...] = ()
    # False when the CRM says the user is deactivated: they never ring, whatever maps them.
    active: bool = True
    # Why the CRM says the user cannot take a call now ("status busy"): they are
    # passed over like a phone in use. Empty: the CRM says nothing against it.
    away: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    """One CRM record whose phone number matched the caller."""

    module: str
    record_id: str
    name: str
    owner: Owner | None
    is_open: bool = True
    # The contact (or account) a deal was found through: the person who calls,
    # as the deal itself has no phone. Empty for every other match.
    via_module: str = ""
    via_id: str = ""
    via_name: str = ""
    # Who takes the record when it has no owner: a Zoho Desk ticket's department
    # (its id and its name), matched against ``[routing.teams.<name>] departments``.
    departments: tuple[str, ...] = ()

    @property
    def caller_name(self) -> str:
        """The caller's own name: the contact's for a deal found through one, else the record's."""
        return self.via_name or self.name


@dataclass
class LookupResult:
    """The matches for one number, best first, and how they were found."""

    matches: list[Match] = field(default_factory=list)
    # Human-readable steps for ``crmroute lookup --explain``: the variants tried,
    # requests made, whether the cache answered.
    steps: list[str] = field(default_factory=list)
    from_cache: bool = False
    # Records that matched the number but do not count, in a few words each
    # ("Leads L-1 is closed"): the caller is in the CRM, just not routable by them.
    passed_over: list[str] = field(default_factory=list)
    # Whether the source holds the number at all, on an open record or a closed
    # one (None: it cannot tell). A mirror that knows a number answers for it;
    # one that does not asks the CRM.
    known: bool | None = None
    # Where the answer came from, for the log line: "directory", "mirror",
    # "live" (the CRM's API), "cache" or "stale" (an expired cache entry).
    source: str = ""
    # How old that source's copy is, in seconds (a mirror's last refresh), when it has one.
    age_s: float | None = None
    # A few words the route reason must carry (e.g. how old a mirror that
    # could not be refreshed is); empty when there is nothing to say.
    note: str = ""

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None
