"""retailCRM lookups: the customer's responsible manager, from the telephony API.

``GET /api/v5/telephony/manager?phone=...&details=1&ignoreStatus=1`` answers
with the customer the number belongs to and the manager responsible for
them, whose ``code`` is their telephony extension. retailCRM compares phone
digits, not country codes, so the number's stored forms are asked all at
once (one round trip) and the best form that finds a customer wins.

The manager's status (free, busy, dinner, break) is not in that answer: the
server reads every user's status in the background (``GET /api/v5/users``,
each ``status_refresh_s``), and a lookup marks a manager whose status is in
``skip_statuses`` as away; the router then passes them over as it passes
over a phone in use. A process that does not serve (``crmroute lookup``,
``crmroute-agi``) reads no statuses: every manager counts as free there.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Mapping, Sequence

from ..circuit import CircuitBreaker
from ..errors import CrmAuthError, CrmError, CrmRateLimited
from ..http import clip, pooled_client
from ..phone import PhoneNumber
from ..records import LookupResult, Match, Owner
from ..secrets import read_secret
from .api import RetailCrmApi, RetailCrmNotFound
from .settings import ENV_API_KEY, RetailCrmSettings

logger = logging.getLogger("crmroute.retailcrm")

CUSTOMERS = "Customers"
# Users are listed this many a page (retailCRM takes 20, 50 or 100).
USERS_PAGE = 100
# At most this many pages of users are read (10,000 users).
MAX_USER_PAGES = 100
_DIGITS = re.compile(r"\D")


class RetailCrmBackend:
    """Looks callers up in retailCRM (API v5)."""

    name = "retailcrm"

    def __init__(self, api: RetailCrmApi, settings: RetailCrmSettings):
        self._api = api
        self._settings = settings
        self._skip = frozenset(settings.skip_statuses)
        # user id -> (status, active), as the last read of the users said; empty until read.
        self.statuses: dict[str, tuple[str, bool]] = {}

    @classmethod
    def open(cls, settings: RetailCrmSettings, environ: Mapping[str, str] | None = None) -> RetailCrmBackend:
        """The backend with its one pooled HTTP client; the key read now (errors name the key)."""
        if not settings.url:
            raise CrmAuthError("retailcrm.url is not set (the account's address, like https://mystore.retailcrm.ru)")
        key = read_secret("retailcrm.api_key", settings.api_key, settings.api_key_file, ENV_API_KEY, environ)
        client = pooled_client(
            connect_timeout_ms=settings.connect_timeout_ms, read_timeout_ms=settings.read_timeout_ms, max_concurrency=settings.max_concurrency
        )
        breaker = CircuitBreaker.from_settings(settings)
        return cls(RetailCrmApi(client, settings.url, key, breaker, max_concurrency=settings.max_concurrency), settings)

    @property
    def api(self) -> RetailCrmApi:
        """The API client, shared with the writer and the call events (one pool, one breaker)."""
        return self._api

    @property
    def settings(self) -> RetailCrmSettings:
        return self._settings

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        if CUSTOMERS not in modules:
            return LookupResult(steps=[f"retailcrm: {', '.join(modules)} asked; retailCRM answers {CUSTOMERS} only"], source="live")
        forms = phone_forms(number)
        trace = [f"retailcrm: phone forms asked, all at once: {', '.join(forms)}"]
        if not self.statuses and self._skip:
            trace.append("retailcrm: managers' statuses not read in this process (crmroute serve reads them): every manager counts as free")
        answers = await asyncio.gather(*(self._manager(form, trace) for form in forms), return_exceptions=True)
        failure: CrmError | None = None
        for form, answer in zip(forms, answers):
            if isinstance(answer, (CrmAuthError, CrmRateLimited)):
                raise answer
            if isinstance(answer, CrmError):
                failure = failure or answer
            elif isinstance(answer, BaseException):
                raise answer
            elif answer is not None:
                match = self._match(answer, form, trace)
                if match is not None:
                    return LookupResult(matches=[match], steps=trace, known=True, source="live")
        if failure is not None:
            raise failure  # a form that failed may be the one that finds the caller
        trace.append("retailcrm: no customer has this number")
        return LookupResult(steps=trace, known=False, source="live")

    async def _manager(self, form: str, trace: list[str]) -> dict[str, Any] | None:
        params = {"phone": form, "details": "1", "ignoreStatus": "1"}
        try:
            return await self._api.get("/telephony/manager", params, trace)
        except RetailCrmNotFound:
            return None

    def _match(self, body: dict[str, Any], form: str, trace: list[str]) -> Match | None:
        """The customer of an answer, owned by its manager; None when it names no customer."""
        customer = body.get("customer")
        if not isinstance(customer, dict) or customer.get("id") in (None, ""):
            return None
        customer_id = clip(customer["id"], 40)
        owner = self._owner(body.get("manager"), trace)
        name = person_name(customer) or f"customer {customer_id}"
        trace.append(f"retailcrm: {form} is customer {customer_id} ({name!r}), manager {owner.id if owner else 'none'}")
        return Match(CUSTOMERS, customer_id, name, owner)

    def _owner(self, manager: Any, trace: list[str]) -> Owner | None:
        if not isinstance(manager, dict) or manager.get("id") in (None, ""):
            return None
        manager_id = clip(manager["id"], 40)
        code = manager.get("code")
        extensions = (code.strip(),) if isinstance(code, str) and code.strip() else ()
        status, active = self.statuses.get(manager_id, ("", True))
        away = f"status {status}" if status in self._skip else ""
        if status:
            trace.append(f"retailcrm: manager {manager_id} is {status}" + (" (passed over)" if away else ""))
        email = manager.get("email") if isinstance(manager.get("email"), str) else ""
        return Owner(manager_id, person_name(manager), clip(email, 120), extensions, active=active, away=away)

    async def read_statuses(self) -> None:
        """Every user's status and whether they are active (``GET /api/v5/users``, page by page)."""
        statuses: dict[str, tuple[str, bool]] = {}
        for user in await self.list_users(purpose="status"):
            given = user.get("status")
            status = given if isinstance(given, str) else ""
            statuses[clip(user["id"], 40)] = (status, _flag(user.get("active"), True))
        self.statuses = statuses

    async def list_users(self, *, purpose: str) -> list[dict[str, Any]]:
        """Every user of the account, as retailCRM lists them."""
        users: list[dict[str, Any]] = []
        for page in range(1, MAX_USER_PAGES + 1):
            body = await self._api.get("/users", {"limit": str(USERS_PAGE), "page": str(page)}, purpose=purpose)
            listed = body.get("users")
            users += [u for u in listed if isinstance(u, dict) and u.get("id") not in (None, "")] if isinstance(listed, list) else []
            paging = body.get("pagination")
            pagination: dict[str, Any] = paging if isinstance(paging, dict) else {}
            total_pages = pagination.get("totalPageCount")
            if not isinstance(total_pages, int) or page >= total_pages:
                break
        return users

    async def warm(self) -> None:
        """In the server, until it stops: keep the managers' statuses fresh."""
        interval = self._settings.status_refresh_s
        while interval > 0:
            try:
                await self.read_statuses()
            except CrmError as exc:
                logger.warning("retailcrm: managers' statuses not read (%s); the last ones read stay", exc)
            await asyncio.sleep(max(interval, self._api.retry_in()))

    async def aclose(self) -> None:
        await self._api.aclose()


def phone_forms(number: PhoneNumber) -> list[str]:
    """The forms of ``number`` a customer's phone may be stored in, best first, one per digit string.

    retailCRM compares digits (``+7 (916) 123-45-67`` is ``79161234567``) but
    knows no country codes, so the international, national and trunk-prefixed
    forms are different numbers to it; forms with the same digits are asked once.
    """
    forms: dict[str, str] = {}
    for form in number.variants():
        forms.setdefault(_DIGITS.sub("", form), form)
    return list(forms.values())


def person_name(person: Mapping[str, Any]) -> str:
    """``First Patronymic Last`` from retailCRM's name fields, each clipped; empty when there are none."""
    parts = [person.get(key) for key in ("firstName", "patronymic", "lastName")]
    return clip(" ".join(part.strip() for part in parts if isinstance(part, str) and part.strip()), 120)


def _flag(value: Any, default: bool) -> bool:
    """retailCRM's booleans come as JSON booleans, or as the strings "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return default
