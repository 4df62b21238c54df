"""What the mirror costs in API credits (Zoho: 1 credit per request, 200 records a page).

The estimate counts every request as a credit, a 304 "nothing changed"
included (Zoho does not say it is free), and one page per module and
refresh (more than 200 changes between two refreshes cost a page each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .settings import MirrorSettings

PAGE = 200
MODULES = 4  # Leads, Contacts, Accounts, Deals
# Metadata read at each full listing: three modules' fields, the Deals layouts and their pipeline.
METADATA_REQUESTS = 5


@dataclass(frozen=True)
class CreditEstimate:
    first_load: int
    per_refresh: int
    refreshes_per_day: int
    per_reconcile: int
    per_day: int


def listing_requests(records: Mapping[str, int]) -> int:
    """Requests to list every record once (an empty module still takes one)."""
    return sum(max(1, math.ceil(count / PAGE)) for count in records.values()) + MODULES - len(records)


def estimate(records: Mapping[str, int], settings: MirrorSettings, users: int = 0) -> CreditEstimate:
    """The credits of the first load, of a refresh, and per day at ``settings``' intervals."""
    user_pages = max(1, math.ceil(users / PAGE))
    full_listing = listing_requests(records) + METADATA_REQUESTS + user_pages
    per_refresh = MODULES * 2 + 1  # changed records and deleted ones per module; changed users
    refreshes = round(86_400 / settings.refresh_s)
    reconciles_per_day = 86_400 / settings.reconcile_s
    per_reconcile = full_listing  # it takes a refresh's place (the records it no longer sees are checked by id: few)
    per_day = round((refreshes - reconciles_per_day) * per_refresh + reconciles_per_day * per_reconcile)
    return CreditEstimate(full_listing, per_refresh, refreshes, per_reconcile, per_day)
