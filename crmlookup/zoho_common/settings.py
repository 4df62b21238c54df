"""The settings every Zoho service's section holds: data centre, OAuth credentials, token file, calm.

``[zoho]`` (Zoho CRM) and ``[zoho_desk]`` both reach Zoho's accounts server
with a self client's credentials and share their token between processes in
a file; both talk to their API with the same timeouts and the same circuit
breaker. Those keys, their ranges and their checks are defined once here;
each section adds its API's own keys and checks. Errors name the key, as
every settings class's do (``check-config`` prefixes the section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..settings import bounded

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

# The credentials keys; each also has a *_file key and an environment variable.
CREDENTIALS = ("client_id", "client_secret", "refresh_token")


def _secret_field() -> str:
    # Credentials stay out of reprs: a Config printed in a log or a traceback shows none.
    return field(default="", repr=False)


@dataclass(frozen=True)
class ZohoAccountSettings:
    """The keys of a Zoho service's section that are about Zoho, not the service.

    A subclass's ``__post_init__`` calls :meth:`_check_account` (with its own
    URL keys), :func:`~crmlookup.settings.check_bounds`, then :meth:`_check_backoff`.
    """

    # US, EU, IN, AU, JP, CN, CA or SA: picks the accounts server and the service's host.
    data_centre: str = "US"
    # Override of the data centre's accounts server (a sandbox, a test double on loopback).
    accounts_url: str = ""
    # Credentials: each from its key, from the file its *_file key names, or from
    # the section's environment variable ($CRMROUTE_ZOHO_CLIENT_ID, $CRMROUTE_ZOHO_DESK_CLIENT_ID, ...).
    client_id: str = _secret_field()
    client_id_file: str = ""
    client_secret: str = _secret_field()
    client_secret_file: str = ""
    refresh_token: str = _secret_field()
    refresh_token_file: str = ""
    # A file (mode 0600) where the access token is shared between processes
    # (crmroute-agi runs one per call, each crmroute command is one). Empty:
    # the service's own file in crmroute's state directory.
    token_cache_file: str = ""
    connect_timeout_ms: int = bounded(2000, 50, 60_000)
    # Long enough for a slow answer to still fill the cache after the call was answered.
    read_timeout_ms: int = bounded(10_000, 50, 300_000)
    # After this many failures in a row (5xx, timeouts) the service is left alone for breaker_open_s.
    breaker_failures: int = bounded(5, 1, 1000)
    breaker_open_s: int = bounded(30, 1, 3600)
    # A 429 leaves the service alone for backoff_initial_ms, doubling on each 429 in a row up to backoff_max_ms.
    backoff_initial_ms: int = bounded(1000, 10, 600_000)
    backoff_max_ms: int = bounded(60_000, 10, 3_600_000)

    def _check_account(self, *url_keys: str) -> None:
        """``data_centre`` known (kept upper case); ``accounts_url`` and ``url_keys`` URLs when set."""
        centre = self.data_centre.upper()
        if centre not in DATA_CENTRES:
            raise ValueError(f"data_centre {self.data_centre!r} is not one of {', '.join(DATA_CENTRES)}")
        object.__setattr__(self, "data_centre", centre)
        for name in ("accounts_url", *url_keys):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, check_url(name, value))

    def _check_backoff(self) -> None:
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError("backoff_max_ms must not be below backoff_initial_ms")

    @property
    def accounts_server(self) -> str:
        return self.accounts_url or DATA_CENTRES[self.data_centre][0]


def check_url(name: str, value: str) -> str:
    """``value`` without its trailing slash; ValueError naming ``name`` unless it is an http(s) server URL."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{name} {value!r} must be a URL like https://accounts.zoho.eu")
    return value.rstrip("/")
