"""Which fields of a module hold phone numbers: every field of data type ``phone``, custom ones too.

Read from the fields metadata (``GET /crm/v8/settings/fields?module=...``),
kept for a configured time. Until it has been read (or when it cannot be),
the standard phone fields of each module stand in: they exist in every org.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from ..errors import CrmBadResponse
from .api import ZohoApi
from .metadata import Kept

# Zoho's standard phone fields, which no org can remove.
STANDARD_PHONE_FIELDS: dict[str, tuple[str, ...]] = {
    "Leads": ("Phone", "Mobile"),
    "Contacts": ("Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone"),
    "Accounts": ("Phone",),
}
# A request names at most 50 fields; the other fields we read leave room for this many phone fields.
MAX_PHONE_FIELDS = 40


class PhoneFields:
    """The phone fields of Leads, Contacts and Accounts."""

    def __init__(self, api: ZohoApi, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._api = api
        self._kept: dict[str, Kept[tuple[str, ...]]] = {
            module: Kept(self._loader(module), ttl_s, f"{module} fields", clock) for module in STANDARD_PHONE_FIELDS
        }
        self._known: dict[str, tuple[str, ...]] = {}

    def current(self, module: str) -> tuple[str, ...]:
        """The phone fields as last read (the standard ones until then), without asking Zoho."""
        return self._known.get(module) or STANDARD_PHONE_FIELDS[module]

    async def get(self, module: str, trace: list[str] | None, *, fresh: bool = False) -> tuple[str, ...]:
        """The phone fields, read from Zoho when the kept copy is older than its time (or ``fresh``)."""
        return await self._kept[module].get(trace, max_age=0 if fresh else None)

    def _loader(self, module: str) -> Callable[[list[str] | None], Awaitable[tuple[str, ...]]]:
        async def load(trace: list[str] | None) -> tuple[str, ...]:
            body = await self._api.get("/settings/fields", {"module": module}, trace, purpose="metadata")
            listed = (body or {}).get("fields")
            if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
                raise CrmBadResponse(f"{module} fields: 'fields' is not a list of fields")
            names = [item["api_name"] for item in listed if item.get("data_type") == "phone" and isinstance(item.get("api_name"), str)]
            names = [name for name in names if name.replace("_", "").isalnum()][:MAX_PHONE_FIELDS]
            found = tuple(dict.fromkeys(names)) or STANDARD_PHONE_FIELDS[module]
            self._known[module] = found
            if trace is not None:
                trace.append(f"{module}: phone fields {', '.join(found)}")
            return found

        return load
