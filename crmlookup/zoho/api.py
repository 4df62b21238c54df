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
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import httpx

from ..circuit import CircuitBreaker
from ..condition import Condition
from ..errors import CrmAuthError, CrmBadResponse, CrmError, CrmRateLimited, CrmTimeout, CrmUnavailable
from ..stats import RequestStats, result_of_error, result_of_status
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
        stats: RequestStats | None = None,
    ):
        self._client = client
        self._tokens = tokens
        self._breaker = breaker
        self._slots = asyncio.Semaphore(max_concurrency)
        self._api_domain_override = api_domain_override
        # Requests sent, by purpose ("lookup", "mirror", "write"...): each costs the org API credits.
        self.sent: Counter[str] = Counter()
        # The same requests by result and latency, for the server's metrics.
        self.stats = stats if stats is not None else RequestStats("zoho")
        # Down once the breaker opens for failures; back at the next answer that is not an error.
        self.reachable = Condition(logger, "Zoho CRM down", "Zoho CRM answers again")

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
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> Answer:
        """:meth:`request` with extra request ``headers`` (``If-Modified-Since``), answering with Zoho's clock too.

        ``files``: a ``multipart/form-data`` body instead of JSON (``{"file": (name, content, type)}``).
        """
        reply, token = await self._send(method, path, params, json_body, headers, trace, purpose, files)
        if reply.status == 401 and error_code(reply) == "INVALID_TOKEN":
            # Expired early or revoked: one refresh, one retry.
            self._tokens.invalidate(token)
            reply, _token = await self._send(method, path, params, json_body, headers, trace, purpose, files)
        if per_record and reply.status == 400:
            body = _records_answer(reply)
            if body is not None:
                self._succeeded()
                return Answer(body, reply.status, _server_time(reply))
        return Answer(self._interpret(reply), reply.status, _server_time(reply))

    @property
    def tokens(self) -> TokenSource:
        return self._tokens

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
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> tuple[Reply, AccessToken]:
        self._check_breaker(trace, purpose)
        async with self._slots:
            self._check_breaker(trace, purpose)  # it may have opened while we queued
            # Taken once a slot is ours, so requests that queued behind a refresh use the new token.
            token = await self._tokens.get(trace)
            url = (self._api_domain_override or token.api_domain) + API_PREFIX + path
            if params:
                url += "?" + encode_query(params)
            request = self._client.build_request(
                method, url, json=json_body, files=dict(files) if files else None, headers={**(headers or {}), "Authorization": token.header}
            )
            self.sent[purpose] += 1
            started = time.perf_counter()
            try:
                reply = await exchange(self._client, request, trace)
            except CrmError as exc:
                self.stats.record(purpose, result_of_error(exc), time.perf_counter() - started)
                if isinstance(exc, (CrmTimeout, CrmUnavailable)):
                    self._failed(str(exc))
                raise
            self.stats.record(purpose, result_of_status(reply.status), time.perf_counter() - started)
            return reply, token

    def _check_breaker(self, trace: list[str] | None, purpose: str = "lookup") -> None:
        if self._breaker.retry_in() > 0:
            self.stats.record(purpose, "circuit_open", None)
        self._breaker.check("Zoho", trace)

    def _interpret(self, reply: Reply) -> dict[str, Any] | None:
        status = reply.status
        if status in (204, 304):
            self._succeeded()
            return None
        if 200 <= status < 300:
            self._succeeded()
            return json_object(reply)
        problem = f"{reply.label}: {describe_error(reply)}"
        if status == 429:
            backoff = self._breaker.record_rate_limited(retry_after(reply))
            logger.warning("Zoho rate limit: %s; backing off %.1f s", problem, backoff)
            raise CrmRateLimited(problem, retry_after=backoff)
        if status >= 500:
            self._failed(problem)
            raise CrmUnavailable(problem)
        if status in (401, 403):
            # OAUTH_SCOPE_MISMATCH, NO_PERMISSION, a token refused twice: a new token will not help,
            # and asking again on every call will not either (the breaker counts it).
            logger.error("Zoho refused the request: %s", problem)
            self._breaker.record_failure(problem)
            raise CrmAuthError(problem, code=error_code(reply))
        raise CrmBadResponse(problem, code=error_code(reply))

    def _succeeded(self) -> None:
        self._breaker.record_success()
        self.reachable.recovered()

    def _failed(self, problem: str) -> None:
        """A timeout, a refused connection or a server error: the CRM is down once the breaker opens."""
        self._breaker.record_failure(problem)
        if self._breaker.is_open:
            self.reachable.failing(f"{self._breaker.reason}; calls are answered from the cache and the mirror meanwhile")

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
