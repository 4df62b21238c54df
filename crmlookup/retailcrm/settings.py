"""The ``[retailcrm]`` section: the account, its API key, and how calm to be with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..settings import bounded, check_bounds

ENV_API_KEY = "CRMROUTE_RETAILCRM_API_KEY"
# The statuses retailCRM gives a user (Users > status; the API's UserStatus).
USER_STATUSES = ("free", "busy", "dinner", "break")


@dataclass(frozen=True)
class RetailCrmSettings:
    """How to reach retailCRM. Used only when ``crm.backend = "retailcrm"``."""

    # The account's address, e.g. https://mystore.retailcrm.ru (the API is below /api/v5).
    url: str = ""
    # The API key (Settings > Integration > API access keys): from this key, the
    # file api_key_file names, or $CRMROUTE_RETAILCRM_API_KEY. Never logged.
    api_key: str = field(default="", repr=False)
    api_key_file: str = ""
    # The store (site code) the call events and the call history belong to;
    # empty: the key's only store (a key with several stores must name one).
    site: str = ""
    # Manager statuses that pass a manager over, as device states pass a phone
    # over; the call then goes to the next owner or the team.
    skip_statuses: tuple[str, ...] = ("busy", "dinner", "break")
    # How often the server reads the managers' statuses (retailCRM's manager
    # lookup does not say it). 0: never; every manager then counts as free.
    status_refresh_s: int = bounded(15, 0, 3600)
    # Screen pop: while the phone rings, tell retailCRM who is calling whom
    # (POST /telephony/call/event), and when the call ends.
    call_events: bool = True
    connect_timeout_ms: int = bounded(2000, 50, 60_000)
    read_timeout_ms: int = bounded(10_000, 50, 300_000)
    # Requests at once from this process; retailCRM limits requests per second per key.
    max_concurrency: int = bounded(5, 1, 50)
    # After this many failures in a row (5xx, timeouts) retailCRM is left alone for breaker_open_s.
    breaker_failures: int = bounded(5, 1, 1000)
    breaker_open_s: int = bounded(30, 1, 3600)
    # A rate-limit answer leaves retailCRM alone for backoff_initial_ms, doubling
    # on each one in a row up to backoff_max_ms (or as long as Retry-After says).
    backoff_initial_ms: int = bounded(1000, 10, 600_000)
    backoff_max_ms: int = bounded(60_000, 10, 3_600_000)

    def __post_init__(self) -> None:
        if self.url:
            object.__setattr__(self, "url", _check_url(self.url))
        for status in self.skip_statuses:
            if status not in USER_STATUSES:
                raise ValueError(f"skip_statuses: {status!r} is not one of {', '.join(USER_STATUSES)}")
        if self.site and not self.site.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"site {self.site!r} is not a store code (letters, digits, '-', '_')")
        check_bounds(self)
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError("backoff_max_ms must not be below backoff_initial_ms")


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment or parts.path.strip("/"):
        raise ValueError(f"url {value!r} must be the account's address, like https://mystore.retailcrm.ru")
    return value.rstrip("/")
