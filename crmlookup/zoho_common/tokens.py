"""A Zoho service's token source, opened from its section's settings.

Zoho CRM and Zoho Desk read their credentials the same way (each from its
key, its *_file key or the section's environment variable; errors name the
key) and share their access token between processes in a file marked with a
fingerprint of the credentials, so a process configured for another org
never uses it. Each service keeps its own file and its own token.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ..secrets import Secret, read_secret
from ..state import state_directory
from ..stats import RequestStats
from ..zoho.auth import TokenSource
from ..zoho.token_file import TokenFile, credentials_fingerprint
from .settings import CREDENTIALS, ZohoAccountSettings


def read_credentials(
    settings: ZohoAccountSettings, *, section: str, env_prefix: str, environ: Mapping[str, str] | None = None
) -> dict[str, Secret]:
    """The credentials of ``[section]``, read now: a missing or unreadable one raises, naming ``section.key``.

    Read before anything is opened, so a backend that cannot start leaves nothing to close.
    """
    return {
        name: read_secret(f"{section}.{name}", getattr(settings, name), getattr(settings, f"{name}_file"), env_prefix + name.upper(), environ)
        for name in CREDENTIALS
    }


def open_token_source(
    client: httpx.AsyncClient,
    settings: ZohoAccountSettings,
    credentials: Mapping[str, Secret],
    *,
    token_file_name: str,
    default_api_domain: str,
    stats: RequestStats,
) -> TokenSource:
    """The token source minting with ``credentials`` (from :func:`read_credentials`) on ``client``.

    ``token_file_name``: the shared token's file in crmroute's state directory
    when ``token_cache_file`` is empty.
    """
    fingerprint = credentials_fingerprint(settings.accounts_server, credentials["client_id"].reveal(), credentials["refresh_token"].reveal())
    return TokenSource(
        client,
        settings.accounts_server,
        client_id=credentials["client_id"],
        client_secret=credentials["client_secret"],
        refresh_token=credentials["refresh_token"],
        default_api_domain=default_api_domain,
        token_file=TokenFile(settings.token_cache_file or state_directory() / token_file_name, fingerprint),
        stats=stats,
    )
