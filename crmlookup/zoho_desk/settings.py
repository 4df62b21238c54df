"""The ``[zoho_desk]`` section: which Desk portal, which credentials, which tickets count."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import bounded, check_bounds
from ..zoho_common.settings import ZohoAccountSettings

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


@dataclass(frozen=True)
class ZohoDeskSettings(ZohoAccountSettings):
    """How to reach Zoho Desk. Used only when a policy's ``lookup_order`` names ``Tickets``.

    It runs beside ``crm.backend`` (``zoho``, ``local`` or another): its own
    credentials (a Desk self client, or the CRM's with the Desk scopes
    added) and its own shared token file. The data centre, credentials
    ($CRMROUTE_ZOHO_DESK_CLIENT_ID / _CLIENT_SECRET / _REFRESH_TOKEN; scopes
    Desk.tickets.READ, Desk.search.READ, Desk.contacts.READ, Desk.basic.READ,
    Desk.settings.READ, Desk.activities.calls.CREATE, Desk.activities.calls.READ),
    token file (default zoho-desk-token.json in crmroute's state directory, never
    the CRM's), timeouts and breaker keys are every Zoho service's
    (:class:`~crmlookup.zoho_common.settings.ZohoAccountSettings`).
    """

    # Override of the data centre's Desk host (a test double on loopback); the accounts servers are Zoho CRM's.
    api_url: str = ""
    # The Desk portal's organisation id (Setup > Developer Space > API), sent as the orgId header.
    org_id: str = ""
    # Tickets "On Hold" (waiting on the customer) count as open: a customer who
    # calls back about one wants its agent. False: only statusType "Open" routes.
    include_on_hold: bool = True
    # Also find the caller's Desk contact by phone, for their tickets that carry no
    # phone of their own (raised by mail): a request beside the ticket search, and a
    # second one only when such a contact is found. Scope Desk.contacts.READ.
    search_contacts: bool = True
    # How many of the caller's tickets one search reads (most recently modified first; Desk allows 100).
    search_limit: int = bounded(50, 1, MAX_SEARCH_LIMIT)
    # How long Desk's agents (their extn, email, status) and departments are kept.
    agents_ttl_s: int = bounded(600, 0, 86_400)
    # Desk's agent availability counts: an agent Desk says is OFFLINE is passed
    # over like a phone in use (read at most every presence_ttl_s).
    use_presence: bool = True
    presence_ttl_s: int = bounded(30, 0, 3600)
    max_concurrency: int = bounded(5, 1, 100)
    # Call activities: write one on the ticket that routed the call (POST /api/v1/calls).
    log_calls: bool = True
    # How long a call activity just created may take to show in the ticket's list of
    # calls; a write whose answer was lost is looked for only after this long.
    search_lag_s: int = bounded(10, 0, 3600)

    def __post_init__(self) -> None:
        self._check_account("api_url")
        if self.org_id and not self.org_id.isdigit():
            raise ValueError(f"org_id {self.org_id!r} must be the portal's numeric organisation id")
        check_bounds(self)
        self._check_backoff()

    @property
    def desk_url(self) -> str:
        return self.api_url or DESK_HOSTS[self.data_centre]

    @property
    def open_status_types(self) -> frozenset[str]:
        """The ticket ``statusType`` values that route (Desk's own three: Open, On Hold, Closed)."""
        return frozenset({"Open", "On Hold"} if self.include_on_hold else {"Open"})
