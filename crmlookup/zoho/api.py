"""Requests to the Zoho CRM API: authenticated, bounded, and calm under trouble.

* At most ``max_concurrency`` requests at once (the org's concurrency limit is
  shared with its other integrations).
* ``401 INVALID_TOKEN``: the token is refreshed once and the request retried once.
* ``429 TOO_MANY_REQUESTS`` opens the circuit breaker for a back-off; server
  errors and timeouts open it after a run of them. While it is open, requests
  fail at once with no network traffic.
* Every other outcome becomes one of the :mod:`crmlookup.errors` classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import httpx

from ..circuit import CircuitBreaker
from ..errors import CrmBadResponse
from ..stats import RequestStats
from ..zoho_common.api import ApiCall, Files, OAuthApi
from .auth import AccessToken, TokenSource
from .http import Reply, describe_error, error_code, json_object

logger = logging.getLogger("crmroute.zoho")

API_PREFIX = "/crm/v8"


@dataclass(frozen=True)
class Answer:
    """A successful API answer: the JSON object (``None`` for 204 and 304) and Zoho's clock."""

    body: dict[str, Any] | None
    status: int
    # The answer's ``Date`` header: what time it is at Zoho (None if absent or unreadable).
    server_time: datetime | None


class ZohoApi(OAuthApi):
    """The CRM API of one org, as JSON in and out (the request path is :class:`~crmlookup.zoho_common.api.OAuthApi`)."""

    service = "Zoho"
    product = "Zoho CRM"
    stats_name = "zoho"
    meanwhile = "calls are answered from the cache and the mirror meanwhile"
    logger = logger

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: TokenSource,
        breaker: CircuitBreaker,
        *,
        max_concurrency: int,
        api_domain_override: str = "",
        stats: RequestStats | None = None,
    ):
        super().__init__(client, tokens, breaker, max_concurrency=max_concurrency, stats=stats)
        self._api_domain_override = api_domain_override

    async def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        trace: list[str] | None = None,
        *,
        purpose: str = "lookup",
    ) -> dict[str, Any] | None:
        """``GET /crm/v8{path}``: the JSON object, or ``None`` for 204 (nothing found)."""
        return await self.request("GET", path, params=params, trace=trace, purpose=purpose)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        trace: list[str] | None = None,
        per_record: bool = False,
        purpose: str = "write",
    ) -> dict[str, Any] | None:
        """One API call; raises a :class:`~crmlookup.errors.CrmError` subclass when it fails.

        ``per_record``: an insert whose every record was refused answers 400
        with one answer per record; that body is returned, not raised.
        """
        answer = await self.fetch(method, path, params=params, json_body=json_body, trace=trace, per_record=per_record, purpose=purpose)
        return answer.body

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        trace: list[str] | None = None,
        per_record: bool = False,
        purpose: str = "lookup",
        files: Files | None = None,
    ) -> Answer:
        """:meth:`request` with extra request ``headers`` (``If-Modified-Since``), answering with Zoho's clock too.

        ``files``: a ``multipart/form-data`` body instead of JSON (``{"file": (name, content, type)}``).
        """
        reply = await self._send_renewing(ApiCall(method, path, params, json_body, headers, files), trace, purpose)
        if per_record and reply.status == 400:
            body = _records_answer(reply)
            if body is not None:
                self._succeeded()
                return Answer(body, reply.status, _server_time(reply))
        return Answer(self._interpret(reply), reply.status, _server_time(reply))

    def _base_url(self, token: AccessToken) -> str:
        # The token response's api_domain is the org's, unless the settings override it.
        return (self._api_domain_override or token.api_domain) + API_PREFIX

    def _token_refused(self, reply: Reply) -> bool:
        # Only INVALID_TOKEN: a 401 for a missing scope will not be cured by a new token.
        return error_code(reply) == "INVALID_TOKEN"

    def _interpret(self, reply: Reply) -> dict[str, Any] | None:
        status = reply.status
        if status in (204, 304):
            self._succeeded()
            return None
        if 200 <= status < 300:
            self._succeeded()
            return json_object(reply)
        self._refused(reply, error_code(reply), describe_error(reply))


def _records_answer(reply: Reply) -> dict[str, Any] | None:
    """The body of a 400 that answers record by record (``{"data": [...]}``), else None."""
    try:
        body = json_object(reply)
    except CrmBadResponse:
        return None
    return body if isinstance(body.get("data"), list) else None


def _server_time(reply: Reply) -> datetime | None:
    value = reply.headers.get("date", "")
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
