"""The request path Zoho CRM's and Zoho Desk's API clients share.

One request: wait for one of ``max_concurrency`` slots (the org's concurrency
limit is shared with its other integrations), refuse at once while the
circuit breaker is open (no network traffic), take the token once the slot is
ours (so requests that queued behind a refresh use the new one), send, count
it by purpose, record its result and latency. A timeout or a refused
connection counts towards opening the breaker; a 401 the service means as
"token refused" renews the token once and sends once more.

How an answer's status and body are read stays with each API (their error
bodies differ); :meth:`OAuthApi._refused` turns the shared error statuses
into :mod:`crmlookup.errors` classes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NoReturn

import httpx

from ..circuit import CircuitBreaker
from ..condition import Condition
from ..errors import CrmAuthError, CrmBadResponse, CrmError, CrmRateLimited, CrmTimeout, CrmUnavailable
from ..http import Reply, encode_query, exchange, retry_after
from ..stats import RequestStats, result_of_error, result_of_status
from ..zoho.auth import AccessToken, TokenSource

# A multipart/form-data body: {"file": (name, content, type)}.
Files = Mapping[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class ApiCall:
    """What one request asks, before it has a token: sent as is again when the token is renewed."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json_body: Any = None
    # Request headers beside Authorization and the API's own (If-Modified-Since).
    headers: Mapping[str, str] | None = None
    # A multipart/form-data body instead of JSON.
    files: Files | None = None


class OAuthApi:
    """One Zoho service's API behind an OAuth token: bounded, guarded by a breaker, counted.

    Subclasses name their service (the class attributes below), say where a
    request goes (:meth:`_base_url`), which headers every request carries
    (``_fixed_headers``), which 401 means the token was refused
    (:meth:`_token_refused`) and how their answers read.
    """

    # How breaker refusals and log lines name the service ("Zoho", "Zoho Desk").
    service: ClassVar[str]
    # How the down and back notes name it ("Zoho CRM", "Zoho Desk").
    product: ClassVar[str]
    # The name of its request metrics when none are given.
    stats_name: ClassVar[str]
    # What the server does while the service is down, for the "down" note.
    meanwhile: ClassVar[str]
    logger: ClassVar[logging.Logger]

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: TokenSource,
        breaker: CircuitBreaker,
        *,
        max_concurrency: int,
        stats: RequestStats | None = None,
    ):
        self._client = client
        self._tokens = tokens
        self._breaker = breaker
        self._slots = asyncio.Semaphore(max_concurrency)
        self._fixed_headers: dict[str, str] = {}
        # Requests sent, by purpose ("lookup", "mirror", "write"...): each costs the org API credits.
        self.sent: Counter[str] = Counter()
        # The same requests by result and latency, for the server's metrics.
        self.stats = stats if stats is not None else RequestStats(self.stats_name)
        # Down once the breaker opens for failures; back at the next answer that is not an error.
        self.reachable = Condition(self.logger, f"{self.product} down", f"{self.product} answers again")

    @property
    def tokens(self) -> TokenSource:
        return self._tokens

    def retry_in(self) -> float:
        """Seconds until the circuit breaker lets requests through again (0: it does now)."""
        return max(0.0, self._breaker.retry_in())

    def _base_url(self, token: AccessToken) -> str:
        """Where paths are appended: ``https://www.zohoapis.eu/crm/v8``."""
        raise NotImplementedError

    def _token_refused(self, reply: Reply) -> bool:
        """Whether this 401 means the token is no longer taken (so a new one may help)."""
        return True

    async def _send_renewing(self, call: ApiCall, trace: list[str] | None, purpose: str) -> Reply:
        """:meth:`_send`, and once more with a new token when the first token was refused."""
        reply, token = await self._send(call, trace, purpose)
        if reply.status == 401 and self._token_refused(reply):
            # Expired early or revoked: one new token, one retry (a second 401 is the answer).
            self._tokens.invalidate(token)
            reply, _token = await self._send(call, trace, purpose)
        return reply

    async def _send(self, call: ApiCall, trace: list[str] | None, purpose: str) -> tuple[Reply, AccessToken]:
        self._check_breaker(trace, purpose)
        async with self._slots:
            self._check_breaker(trace, purpose)  # it may have opened while we queued
            # Taken once a slot is ours, so requests that queued behind a refresh use the new token.
            token = await self._tokens.get(trace)
            url = self._base_url(token) + call.path
            if call.params:
                url += "?" + encode_query(call.params)
            request = self._client.build_request(
                call.method,
                url,
                json=call.json_body,
                files=dict(call.files) if call.files else None,
                headers={**(call.headers or {}), "Authorization": token.header, **self._fixed_headers},
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
        self._breaker.check(self.service, trace)

    def _refused(self, reply: Reply, code: str, described: str) -> NoReturn:
        """Raise for an answer that is not a success: ``described`` is the error body, read by the caller."""
        status = reply.status
        problem = f"{reply.label}: {described}"
        if status == 429:
            backoff = self._breaker.record_rate_limited(retry_after(reply))
            self.logger.warning("%s rate limit: %s; backing off %.1f s", self.service, problem, backoff)
            raise CrmRateLimited(problem, retry_after=backoff)
        if status >= 500:
            self._failed(problem)
            raise CrmUnavailable(problem)
        if status in (401, 403):
            # A missing scope, no permission, a token refused twice: a new token will not help,
            # and asking again on every call will not either (the breaker counts it).
            self.logger.error("%s refused the request: %s", self.service, problem)
            self._breaker.record_failure(problem)
            raise CrmAuthError(problem, code=code)
        raise CrmBadResponse(problem, code=code)

    def _succeeded(self) -> None:
        self._breaker.record_success()
        self.reachable.recovered()

    def _failed(self, problem: str) -> None:
        """A timeout, a refused connection or a server error: the service is down once the breaker opens."""
        self._breaker.record_failure(problem)
        if self._breaker.is_open:
            self.reachable.failing(f"{self._breaker.reason}; {self.meanwhile}")

    async def aclose(self) -> None:
        await self._client.aclose()
