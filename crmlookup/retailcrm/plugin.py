"""retailCRM as a CRM plugin: ``[crm] backend = "retailcrm"``, settings in ``[retailcrm]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import RetailCrmSettings

if TYPE_CHECKING:
    from ..backend import CrmBackend
    from ..events import CallEvents
    from ..mirror.feed import ChangeFeed
    from ..plugins import OpenContext
    from ..writer import CrmWriter
    from .backend import RetailCrmBackend

# The credentials (API methods) the key needs, as GET /api/credentials lists them.
NEEDED_CREDENTIALS = ("/api/telephony/manager", "/api/telephony/call/event", "/api/telephony/calls/upload", "/api/users")


class RetailCrmPlugin:
    """retailCRM API v5 through an API key (httpx is loaded only when it opens)."""

    name = "retailcrm"
    section = "retailcrm"
    settings_type = RetailCrmSettings
    modules = ("Customers",)

    def open_backend(self, settings: RetailCrmSettings, context: OpenContext) -> RetailCrmBackend:
        from .backend import RetailCrmBackend

        return RetailCrmBackend.open(settings)

    def open_writer(self, backend: CrmBackend, settings: RetailCrmSettings) -> CrmWriter:
        from .writer import RetailCrmWriter

        return RetailCrmWriter(_retailcrm(backend))

    def change_feed(self, backend: CrmBackend) -> ChangeFeed | None:
        return None  # each lookup is one round trip already; nothing to mirror

    def call_events(self, backend: CrmBackend, settings: RetailCrmSettings) -> CallEvents | None:
        from .events import RetailCrmCallEvents

        return RetailCrmCallEvents(_retailcrm(backend).api, settings.site) if settings.call_events else None

    async def check_online(self, backend: CrmBackend, settings: RetailCrmSettings) -> list[str]:
        """Checks the key with ``GET /api/credentials`` (one request): the methods it may call and its store."""
        body = await _retailcrm(backend).api.get("/credentials", purpose="check", versioned=False)
        granted = body.get("credentials")
        problems = []
        if isinstance(granted, list):
            missing = [method for method in NEEDED_CREDENTIALS if method not in granted]
            if missing:
                problems.append(f"retailcrm.api_key: the key may not call {', '.join(missing)} (grant them in Settings > Integration > API access keys)")
        sites = body.get("sitesAvailable")
        if settings.site and isinstance(sites, list) and settings.site not in sites:
            problems.append(f"retailcrm.site: {settings.site!r} is not a store this key may use (it may use: {', '.join(map(str, sites)) or 'none'})")
        return problems

    def describe(self, settings: RetailCrmSettings) -> str:
        return settings.url or "retailcrm.url not set"


def _retailcrm(backend: CrmBackend) -> RetailCrmBackend:
    from .backend import RetailCrmBackend

    if not isinstance(backend, RetailCrmBackend):
        raise TypeError(f"the retailcrm plugin works with a RetailCrmBackend, not with {type(backend).__name__}")
    return backend


plugin = RetailCrmPlugin()
