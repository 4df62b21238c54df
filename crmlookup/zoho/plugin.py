"""Zoho CRM as a CRM plugin: ``[crm] backend = "zoho"``, settings in ``[zoho]``.

Zoho offers a change feed, so the mirror (``[mirror]``) can answer for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..records import MODULES
from .settings import ZohoSettings

if TYPE_CHECKING:
    from ..backend import CrmBackend
    from ..mirror.feed import ChangeFeed
    from ..plugins import OpenContext
    from ..writer import CrmWriter
    from .backend import ZohoBackend


class ZohoPlugin:
    """Zoho CRM API v8 through OAuth2 (httpx is loaded only when it opens)."""

    name = "zoho"
    section = "zoho"
    settings_type = ZohoSettings
    modules = MODULES

    def open_backend(self, settings: ZohoSettings, context: OpenContext) -> ZohoBackend:
        from .backend import ZohoBackend

        return ZohoBackend.open(settings)

    def open_writer(self, backend: CrmBackend, settings: ZohoSettings) -> CrmWriter:
        from .writer import ZohoWriter

        zoho = _zoho(backend)
        return ZohoWriter(zoho.api, zoho.settings, zoho.active_users)

    def change_feed(self, backend: CrmBackend) -> ChangeFeed | None:
        return _zoho(backend).feed

    async def check_online(self, backend: CrmBackend, settings: ZohoSettings) -> list[str]:
        """Mints a token and reads the active users (one request); checks ``user_extension_field`` is theirs."""
        body = await _zoho(backend).api.get("/users", {"type": "ActiveUsers", "per_page": "200"}, purpose="check")
        users = [user for user in (body or {}).get("users") or [] if isinstance(user, dict)]
        field = settings.user_extension_field
        if field and users and not any(field in user for user in users):
            return [f"zoho.user_extension_field: {field!r} is not a field of Zoho's users (none of the {len(users)} active users has it)"]
        return []

    def describe(self, settings: ZohoSettings) -> str:
        return f"data centre {settings.data_centre}, {settings.accounts_server}"


def _zoho(backend: CrmBackend) -> ZohoBackend:
    from .backend import ZohoBackend

    if not isinstance(backend, ZohoBackend):
        raise TypeError(f"the zoho plugin works with a ZohoBackend, not with {type(backend).__name__}")
    return backend


plugin = ZohoPlugin()
