"""The ``[zoho]`` section: which Zoho data centre, which credentials, how calm to be."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..settings import bounded, check_bounds

# Accounts server (OAuth) and API domain per data centre, as Zoho's SDKs list
# them. The token response's ``api_domain`` wins over the API domain here.
DATA_CENTRES: dict[str, tuple[str, str]] = {
    "US": ("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "EU": ("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "IN": ("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "AU": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "JP": ("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "CN": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "CA": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    "SA": ("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
}

ENV_PREFIX = "CRMROUTE_ZOHO_"


def _secret_field() -> str:
    # Credentials stay out of reprs: a Config printed in a log or a traceback shows none.
    return field(default="", repr=False)


@dataclass(frozen=True)
class ZohoSettings:
    """How to reach Zoho CRM. Used only when ``crm.backend = "zoho"``."""

    # US, EU, IN, AU, JP, CN, CA or SA: picks the accounts server and API domain.
    data_centre: str = "US"
    # Overrides of the data centre's servers (a sandbox, a test double on loopback).
    accounts_url: str = ""
    api_domain: str = ""
    # Credentials: each from its key, from the file its *_file key names, or from
    # $CRMROUTE_ZOHO_CLIENT_ID / _CLIENT_SECRET / _REFRESH_TOKEN.
    client_id: str = _secret_field()
    client_id_file: str = ""
    client_secret: str = _secret_field()
    client_secret_file: str = ""
    refresh_token: str = _secret_field()
    refresh_token_file: str = ""
    # A file (mode 0600) where the access token is shared between processes
    # (crmroute-agi runs one per call, each crmroute command is one). Empty:
    # zoho-token.json in crmroute's state directory.
    token_cache_file: str = ""
    connect_timeout_ms: int = bounded(2000, 50, 60_000)
    # Long enough for a slow answer to still fill the cache after the call was answered.
    read_timeout_ms: int = bounded(10_000, 50, 300_000)
    # Requests to Zoho at once, from this process. The org's limit (Standard 10,
    # Professional 15, Enterprise 20, Ultimate 25) is shared with its other integrations.
    max_concurrency: int = bounded(10, 1, 100)
    # Lead_Status values that mean the lead no longer decides who owns the caller.
    closed_lead_statuses: tuple[str, ...] = ("Junk Lead", "Lost Lead", "Not Qualified")
    # Deals layouts whose pipelines say which stages are open; empty: ask Zoho for them.
    deal_layout_ids: tuple[str, ...] = ()
    # A custom field of the Users module holding each user's extension(s); empty: none.
    user_extension_field: str = ""
    # How long the active users and the pipeline stage table are kept.
    users_ttl_s: int = bounded(600, 0, 86_400)
    pipeline_ttl_s: int = bounded(3600, 0, 86_400)
    # Also search the forms people type ("928 00 00 00", "+34-928-000-000"): only
    # for an org whose search compares phone text exactly; costs requests on a miss.
    search_typed_formats: bool = False
    # Call logging: a field of Calls and Tasks (a custom text field such as
    # "Asterisk_Call_ID") that holds the call's unique id, so a write whose answer
    # was lost is found again by it; empty: found by its exact Subject.
    call_id_field: str = ""
    # Call recordings linked rather than attached ([recordings]): the Calls field
    # that takes the address (Voice_Recording__s, which Zoho's telephony
    # integrations fill); empty: a "Recording:" line added to the description.
    recording_field: str = ""
    # How long a record just created may take to show in Zoho's search; a write
    # whose answer was lost is looked for only after this long.
    search_lag_s: int = bounded(60, 0, 3600)
    # After this many failures in a row (5xx, timeouts) Zoho is left alone for breaker_open_s.
    breaker_failures: int = bounded(5, 1, 1000)
    breaker_open_s: int = bounded(30, 1, 3600)
    # A 429 leaves Zoho alone for backoff_initial_ms, doubling on each 429 in a row up to backoff_max_ms.
    backoff_initial_ms: int = bounded(1000, 10, 600_000)
    backoff_max_ms: int = bounded(60_000, 10, 3_600_000)

    def __post_init__(self) -> None:
        centre = self.data_centre.upper()
        if centre not in DATA_CENTRES:
            raise ValueError(f"data_centre {self.data_centre!r} is not one of {', '.join(DATA_CENTRES)}")
        object.__setattr__(self, "data_centre", centre)
        for name in ("accounts_url", "api_domain"):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, _check_url(name, value))
        check_bounds(self)
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError("backoff_max_ms must not be below backoff_initial_ms")
        for name in ("user_extension_field", "call_id_field", "recording_field"):
            value = getattr(self, name)
            if value and not value.replace("_", "").isalnum():
                raise ValueError(f"{name} {value!r} is not a field API name")

    @property
    def accounts_server(self) -> str:
        return self.accounts_url or DATA_CENTRES[self.data_centre][0]

    @property
    def default_api_domain(self) -> str:
        return self.api_domain or DATA_CENTRES[self.data_centre][1]


def _check_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{name} {value!r} must be a URL like https://accounts.zoho.eu")
    return value.rstrip("/")
