"""Requests to the Zoho Desk API: authenticated, with the orgId header, bounded, calm under trouble.

Desk answers errors as ``{"errorCode", "message"}`` (``INVALID_OAUTH`` for
a token it no longer takes, ``INVALID_DATA`` with ``errors`` per field,
``FORBIDDEN``, ``TOO_MANY_REQUESTS``) and 204 with no body when a search or
a listing finds nothing. As for Zoho CRM (:mod:`crmlookup.zoho.api`): a
token refused with 401 is renewed once and the request sent once more; a 429
opens the circuit breaker for a back-off, a run of server errors and
timeouts opens it for ``breaker_open_s``; while it is open no request leaves.
The token comes from Zoho's accounts server, as the CRM's does, through the
same :class:`~crmlookup.zoho.auth.TokenSource`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any, Mapping

import httpx

from ..circuit import CircuitBreaker
from ..condition import Condition
from ..errors import CrmAuthError, CrmBadResponse, CrmError, CrmRateLimited, CrmTimeout, CrmUnavailable
from ..http import Reply, clip, encode_query, exchange, json_object, retry_after
from ..stats import RequestStats, result_of_error, result_of_status
from ..zoho.auth import AccessToken, TokenSource

logger = logging.getLogger("crmroute.zoho_desk")

API_PREFIX = "/api/v1"


def desk_error(reply: Reply) -> tuple[str, str]:
    """``(errorCode, "401 INVALID_OAUTH: message")`` of a Desk error body (code empty when it is none)."""
    try:
        data = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("errorCode"), str):
        return "", f"{reply.status} (no Desk error body)"
    code = data["errorCode"]
    message = data.get("message")
    text = f"{code}: {message}" if isinstance(message, str) and message else code
    fields = [str(e["fieldName"]) for e in data.get("errors") or [] if isinstance(e, dict) and isinstance(e.get("fieldName"), str)]
    if fields:
        text += f" ({', '.join(fields[:5])})"
    return code, f"{reply.status} {clip(text)}"


class DeskApi:
    """The API of one Desk portal (org), as JSON in and out."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: TokenSource,
        breaker: CircuitBreaker,
        *,
        org_id: str,
        desk_url: str,
        max_concurrency: int,
        stats: RequestStats | None = None,
    ):
        self._client = client
        self._tokens = tokens
        self._breaker = breaker
        self._org_id = org_id
        self._base = desk_url.rstrip("/") + API_PREFIX
        self._slots = asyncio.Semaphore(max_concurrency)
        self.sent: Counter[str] = Counter()
        self.stats = stats if stats is not None else RequestStats("zoho_desk")
        self.reachable = Condition(logger, "Zoho Desk down", "Zoho Desk answers again")

    @property
    def tokens(self) -> TokenSource:
        return self._tokens

    async def get(self, path: str, params: Mapping[str, str] | None = None, trace: list[str] | None = None, *,
                  purpose: str = "lookup") -> dict[str, Any] | None:
        """``GET /api/v1{path}``: the JSON object, or None for 204 (nothing found)."""
        return await self.request("GET", path, params=params, trace=trace, purpose=purpose)

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None, json_body: Any = None,
                      trace: list[str] | None = None, purpose: str = "write") -> dict[str, Any] | None:
        """One API call; a :class:`~crmlookup.errors.CrmError` subclass when it fails."""
        reply, token = await self._send(method, path, params, json_body, trace, purpose)
        if reply.status == 401:
            # Expired early or revoked: one new token, one retry (a second 401 is the answer).
            self._tokens.invalidate(token)
            reply, _token = await self._send(method, path, params, json_body, trace, purpose)
        return self._interpret(reply)

    async def _send(self, method: str, path: str, params: Mapping[str, str] | None, json_body: Any,
                    trace: list[str] | None, purpose: str) -> tuple[Reply, AccessToken]:
        self._check_breaker(trace, purpose)
        async with self._slots:
            self._check_breaker(trace, purpose)
            token = await self._tokens.get(trace)
            url = self._base + path + ("?" + encode_query(params) if params else "")
            headers = {"Authorization": token.header, "orgId": self._org_id}
            request = self._client.build_request(method, url, json=json_body, headers=headers)
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

    def _check_breaker(self, trace: list[str] | None, purpose: str) -> None:
        if self._breaker.retry_in() > 0:
            self.stats.record(purpose, "circuit_open", None)
        self._breaker.check("Zoho Desk", trace)

    def _interpret(self, reply: Reply) -> dict[str, Any] | None:
        status = reply.status
        if status == 204:
            self._succeeded()
            return None
        if 200 <= status < 300:
            body = json_object(reply)
            self._succeeded()
            return body
        code, described = desk_error(reply)
        problem = f"{reply.label}: {described}"
        if status == 429:
            backoff = self._breaker.record_rate_limited(retry_after(reply))
            logger.warning("Zoho Desk rate limit: %s; backing off %.1f s", problem, backoff)
            raise CrmRateLimited(problem, retry_after=backoff)
        if status >= 500:
            self._failed(problem)
            raise CrmUnavailable(problem)
        if status in (401, 403):
            logger.error("Zoho Desk refused the request: %s", problem)
            self._breaker.record_failure(problem)
            raise CrmAuthError(problem, code=code)
        raise CrmBadResponse(problem, code=code)

    def _succeeded(self) -> None:
        self._breaker.record_success()
        self.reachable.recovered()

    def _failed(self, problem: str) -> None:
        self._breaker.record_failure(problem)
        if self._breaker.is_open:
            self.reachable.failing(f"{self._breaker.reason}; the Tickets rule is answered from the cache meanwhile")

    async def aclose(self) -> None:
        await self._client.aclose()
