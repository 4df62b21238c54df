"""The ``[zoho]`` section: which Zoho data centre, which credentials, how calm to be."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import bounded, check_bounds
from ..zoho_common.settings import DATA_CENTRES, ZohoAccountSettings

__all__ = ["DATA_CENTRES", "ENV_PREFIX", "ZohoSettings"]

ENV_PREFIX = "CRMROUTE_ZOHO_"


@dataclass(frozen=True)
class ZohoSettings(ZohoAccountSettings):
    """How to reach Zoho CRM. Used only when ``crm.backend = "zoho"``.

    The data centre, credentials ($CRMROUTE_ZOHO_CLIENT_ID / _CLIENT_SECRET /
    _REFRESH_TOKEN), token file (default zoho-token.json in crmroute's state
    directory), timeouts and breaker keys are every Zoho service's
    (:class:`~crmlookup.zoho_common.settings.ZohoAccountSettings`).
    """

    # Override of the data centre's API domain (a sandbox, a test double on loopback).
    api_domain: str = ""
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

    def __post_init__(self) -> None:
        self._check_account("api_domain")
        check_bounds(self)
        self._check_backoff()
        for name in ("user_extension_field", "call_id_field", "recording_field"):
            value = getattr(self, name)
            if value and not value.replace("_", "").isalnum():
                raise ValueError(f"{name} {value!r} is not a field API name")

    @property
    def default_api_domain(self) -> str:
        return self.api_domain or DATA_CENTRES[self.data_centre][1]

