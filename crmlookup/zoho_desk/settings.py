"""The ``[zoho_desk]`` section: which Desk portal, which credentials, which tickets count."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import check_ranges
from ..zoho.settings import DATA_CENTRES, _check_url

# Desk's API host per Zoho data centre (the accounts servers are Zoho CRM's).
DESK_HOSTS: dict[str, str] = {
    "US": "https://desk.zoho.com",
    "EU": "https://desk.zoho.eu",
    "IN": "https://desk.zoho.in",
    "AU": "https://desk.zoho.com.au",
    "JP": "https://desk.zoho.jp",
    "CN": "https://desk.zoho.com.cn",
    "CA": "https://desk.zohocloud.ca",
    "SA": "https://desk.zoho.sa",
}

ENV_PREFIX = "CRMROUTE_ZOHO_DESK_"
# Desk's ticket search answers at most 100 tickets a page.
MAX_SEARCH_LIMIT = 100


def _secret_field() -> str:
    # Credentials stay out of reprs: a Config printed in a log or a traceback shows none.
    return field(default="", repr=False)


@dataclass(frozen=True)
class ZohoDeskSettings:
    """How to reach Zoho Desk. Used only when a policy's ``lookup_order`` names ``Tickets``.

    It runs beside ``crm.backend`` (``zoho``, ``local`` or another): its own
    credentials (a Desk self client, or the CRM's with the Desk scopes
    added) and its own shared token file.
    """

    # US, EU, IN, AU, JP, CN, CA or SA: picks the accounts server and Desk's host.
    data_centre: str = "US"
    # Overrides of the data centre's servers (a test double on loopback).
    accounts_url: str = ""
    api_url: str = ""
    # The Desk portal's organisation id (Setup > Developer Space > API), sent as the orgId header.
    org_id: str = ""
    # Credentials: each from its key, from the file its *_file key names, or from
    # $CRMROUTE_ZOHO_DESK_CLIENT_ID / _CLIENT_SECRET / _REFRESH_TOKEN. Scopes:
    # Desk.tickets.READ, Desk.search.READ, Desk.contacts.READ, Desk.basic.READ, Desk.settings.READ,
    # Desk.activities.calls.CREATE, Desk.activities.calls.READ.
    client_id: str = _secret_field()
    client_id_file: str = ""
    client_secret: str = _secret_field()
    client_secret_file: str = ""
    refresh_token: str = _secret_field()
    refresh_token_file: str = ""
    # Where the access token is shared between processes (mode 0600). Empty:
    # zoho-desk-token.json in crmroute's state directory (never the CRM's file).
    token_cache_file: str = ""
    # Tickets "On Hold" (waiting on the customer) count as open: a customer who
    # calls back about one wants its agent. False: only statusType "Open" routes.
    include_on_hold: bool = True
    # Also find the caller's Desk contact by phone, for their tickets that carry no
    # phone of their own (raised by mail): a request beside the ticket search, and a
    # second one only when such a contact is found. Scope Desk.contacts.READ.
    search_contacts: bool = True
    # How many of the caller's tickets one search reads (most recently modified first; Desk allows 100).
    search_limit: int = 50
    # How long Desk's agents (their extn, email, status) and departments are kept.
    agents_ttl_s: int = 600
    # Desk's agent availability counts: an agent Desk says is OFFLINE is passed
    # over like a phone in use (read at most every presence_ttl_s).
    use_presence: bool = True
    presence_ttl_s: int = 30
    connect_timeout_ms: int = 2000
    read_timeout_ms: int = 10_000
    max_concurrency: int = 5
    # Call activities: write one on the ticket that routed the call (POST /api/v1/calls).
    log_calls: bool = True
    # How long a call activity just created may take to show in the ticket's list of
    # calls; a write whose answer was lost is looked for only after this long.
    search_lag_s: int = 10
    breaker_failures: int = 5
    breaker_open_s: int = 30
    backoff_initial_ms: int = 1000
    backoff_max_ms: int = 60_000

    def __post_init__(self) -> None:
        centre = self.data_centre.upper()
        if centre not in DATA_CENTRES:
            raise ValueError(f"data_centre {self.data_centre!r} is not one of {', '.join(DATA_CENTRES)}")
        object.__setattr__(self, "data_centre", centre)
        for name in ("accounts_url", "api_url"):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, _check_url(name, value))
        if self.org_id and not self.org_id.isdigit():
            raise ValueError(f"org_id {self.org_id!r} must be the portal's numeric organisation id")
        check_ranges(self, (
            ("search_limit", 1, MAX_SEARCH_LIMIT),
            ("agents_ttl_s", 0, 86_400),
            ("presence_ttl_s", 0, 3600),
            ("connect_timeout_ms", 50, 60_000),
            ("read_timeout_ms", 50, 300_000),
            ("max_concurrency", 1, 100),
            ("search_lag_s", 0, 3600),
            ("breaker_failures", 1, 1000),
            ("breaker_open_s", 1, 3600),
            ("backoff_initial_ms", 10, 600_000),
            ("backoff_max_ms", 10, 3_600_000),
        ))
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError("backoff_max_ms must not be below backoff_initial_ms")

    @property
    def accounts_server(self) -> str:
        return self.accounts_url or DATA_CENTRES[self.data_centre][0]

    @property
    def desk_url(self) -> str:
        return self.api_url or DESK_HOSTS[self.data_centre]

    @property
    def open_status_types(self) -> frozenset[str]:
        """The ticket ``statusType`` values that route (Desk's own three: Open, On Hold, Closed)."""
        return frozenset({"Open", "On Hold"} if self.include_on_hold else {"Open"})
