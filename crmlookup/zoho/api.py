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

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import httpx

from ..circuit import CircuitBreaker
from ..errors import CrmAuthError, CrmBadResponse, CrmRateLimited, CrmTimeout, CrmUnavailable
from .auth import AccessToken, TokenSource
from ..http import retry_after
from .http import Reply, describe_error, encode_query, error_code, exchange, json_object

logger = logging.getLogger("crmroute.zoho")

API_PREFIX = "/crm/v8"


@dataclass(frozen=True)
class Answer:
    """A successful API answer: the JSON object (``None`` for 204 and 304) and Zoho's clock."""

    body: dict[str, Any] | None
    status: int
    # The answer's ``Date`` header: what time it is at Zoho (None if absent or unreadable).
    server_time: datetime | None


class ZohoApi:
    """The CRM API of one org, as JSON in and out."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: TokenSource,
        breaker: CircuitBreaker,
        *,
        max_concurrency: int,
        api_domain_override: str = "",
    ):
        self._client = client
        self._tokens = tokens
        self._breaker = breaker
        self._slots = asyncio.Semaphore(max_concurrency)
        self._api_domain_override = api_domain_override
        # Requests sent, by purpose ("lookup", "mirror", "write"...): each costs the org API credits.
        self.sent: Counter[str] = Counter()

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
    ) -> Answer:
        """:meth:`request` with extra request ``headers`` (``If-Modified-Since``), answering with Zoho's clock too."""
        reply, token = await self._send(method, path, params, json_body, headers, trace, purpose)
        if reply.status == 401 and error_code(reply) == "INVALID_TOKEN":
            # Expired early or revoked: one refresh, one retry.
            self._tokens.invalidate(token)
            reply, _token = await self._send(method, path, params, json_body, headers, trace, purpose)
        if per_record and reply.status == 400:
            body = _records_answer(reply)
            if body is not None:
                self._breaker.record_success()
                return Answer(body, reply.status, _server_time(reply))
        return Answer(self._interpret(reply), reply.status, _server_time(reply))

    def retry_in(self) -> float:
        """Seconds until the circuit breaker lets requests through again (0: it does now)."""
        return max(0.0, self._breaker.retry_in())

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
        trace: list[str] | None,
        purpose: str,
    ) -> tuple[Reply, AccessToken]:
        self._check_breaker(trace)
        async with self._slots:
            self._check_breaker(trace)  # it may have opened while we queued
            # Taken once a slot is ours, so requests that queued behind a refresh use the new token.
            token = await self._tokens.get(trace)
            url = (self._api_domain_override or token.api_domain) + API_PREFIX + path
            if params:
                url += "?" + encode_query(params)
            request = self._client.build_request(method, url, json=json_body, headers={**(headers or {}), "Authorization": token.header})
            self.sent[purpose] += 1
            try:
                return await exchange(self._client, request, trace), token
            except (CrmTimeout, CrmUnavailable) as exc:
                self._breaker.record_failure(str(exc))
                raise

    def _check_breaker(self, trace: list[str] | None) -> None:
        self._breaker.check("Zoho", trace)

    def _interpret(self, reply: Reply) -> dict[str, Any] | None:
        status = reply.status
        if status in (204, 304):
            self._breaker.record_success()
            return None
        if 200 <= status < 300:
            self._breaker.record_success()
            return json_object(reply)
        problem = f"{reply.label}: {describe_error(reply)}"
        if status == 429:
            backoff = self._breaker.record_rate_limited(retry_after(reply))
            logger.warning("Zoho rate limit: %s; backing off %.1f s", problem, backoff)
            raise CrmRateLimited(problem, retry_after=backoff)
        if status >= 500:
            self._breaker.record_failure(problem)
            raise CrmUnavailable(problem)
        if status in (401, 403):
            # OAUTH_SCOPE_MISMATCH, NO_PERMISSION, a token refused twice: a new token will not help,
            # and asking again on every call will not either (the breaker counts it).
            logger.error("Zoho refused the request: %s", problem)
            self._breaker.record_failure(problem)
            raise CrmAuthError(problem, code=error_code(reply))
        raise CrmBadResponse(problem, code=error_code(reply))

    async def aclose(self) -> None:
        await self._client.aclose()


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
