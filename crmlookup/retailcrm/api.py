"""Requests to the retailCRM API (v5): the key in a header, bounded, and calm under trouble.

What retailCRM's official clients do, and so what this does:

* the API key travels in the ``X-API-KEY`` header (never in a URL, so no
  trace or log line can carry it);
* ``POST`` bodies are form fields whose values are JSON (``event=``,
  ``calls=``);
* an error is ``{"success": false, "errorMsg": ..., "errors": ...}`` with an
  HTTP status of 400 or more; ``Wrong "apiKey" value.``, ``"apiKey" is
  missing.``, ``Access denied.`` and ``Account does not exist.`` are the
  credential and account errors (an account that does not exist may also
  answer a POST with ``405`` and an HTML page).

Past the requests per second a key may make, the answer is a ``429`` or a
``503``: both open the circuit breaker for a back-off (``Retry-After`` when
given), as server errors and timeouts do after a run of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any, Mapping

import httpx

from ..circuit import CircuitBreaker
from ..errors import CrmAuthError, CrmBadResponse, CrmError, CrmRateLimited, CrmTimeout, CrmUnavailable
from ..http import Reply, clip, encode_query, exchange, json_object, retry_after
from ..secrets import Secret

logger = logging.getLogger("crmroute.retailcrm")

API_PREFIX = "/api/v5"
# errorMsg texts that mean our key (or the account) is refused, as retailCRM's clients list them.
CREDENTIAL_ERRORS = frozenset({'"apiKey" is missing.', 'Wrong "apiKey" value.', "Access denied.", "Account does not exist."})
RATE_LIMITED = frozenset({429, 503})


class RetailCrmRejected(CrmError):
    """retailCRM refused the request's data (a validation error): ``errors`` says what, field by field."""

    def __init__(self, message: str, *, code: str = "", errors: Mapping[str, str] | None = None):
        super().__init__(message, code=code)
        self.errors = dict(errors or {})


class RetailCrmApi:
    """The API of one retailCRM account, as JSON out."""

    def __init__(self, client: httpx.AsyncClient, url: str, api_key: Secret, breaker: CircuitBreaker, *, max_concurrency: int):
        self._client = client
        self._url = url
        self._key = api_key
        self._breaker = breaker
        self._slots = asyncio.Semaphore(max_concurrency)
        # Requests sent, by purpose ("lookup", "status", "event", "write", "check").
        self.sent: Counter[str] = Counter()

    async def get(self, path: str, params: Mapping[str, str] | None = None, trace: list[str] | None = None, *, purpose: str = "lookup", versioned: bool = True) -> dict[str, Any]:
        """``GET /api/v5{path}`` (``/api{path}`` unversioned): the JSON object of a successful answer."""
        return await self.request("GET", path, params=params, trace=trace, purpose=purpose, versioned=versioned)

    async def post(self, path: str, form: Mapping[str, Any], trace: list[str] | None = None, *, purpose: str) -> dict[str, Any]:
        """``POST /api/v5{path}`` with each value of ``form`` sent as a JSON form field (strings as they are)."""
        fields = {key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False) for key, value in form.items()}
        return await self.request("POST", path, form=fields, trace=trace, purpose=purpose)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        trace: list[str] | None = None,
        purpose: str = "lookup",
        versioned: bool = True,
    ) -> dict[str, Any]:
        """One API call; raises a :class:`~crmlookup.errors.CrmError` subclass when it fails."""
        self._check_breaker(trace)
        async with self._slots:
            self._check_breaker(trace)  # it may have opened while we queued
            url = self._url + (API_PREFIX if versioned else "/api") + path
            if params:
                url += "?" + encode_query(params)
            request = self._client.build_request(method, url, data=form, headers={"X-API-KEY": self._key.reveal()})
            self.sent[purpose] += 1
            try:
                reply = await exchange(self._client, request, trace)
            except (CrmTimeout, CrmUnavailable) as exc:
                self._breaker.record_failure(str(exc))
                raise
        return self._interpret(reply)

    def retry_in(self) -> float:
        """Seconds until the circuit breaker lets requests through again (0: it does now)."""
        return self._breaker.retry_in()

    def _check_breaker(self, trace: list[str] | None) -> None:
        self._breaker.check("retailCRM", trace)

    def _interpret(self, reply: Reply) -> dict[str, Any]:
        status = reply.status
        if status in RATE_LIMITED:
            backoff = self._breaker.record_rate_limited(retry_after(reply), status)
            problem = f"{reply.label}: {status} {_error_text(reply)}"
            logger.warning("retailCRM rate limit: %s; backing off %.1f s", problem, backoff)
            raise CrmRateLimited(problem, retry_after=backoff)
        if status == 405 and "text/html" in reply.headers.get("content-type", ""):
            self._breaker.record_failure("405")
            raise CrmAuthError(f"{reply.label}: Account does not exist. (check retailcrm.url)", code="Account does not exist.")
        if status >= 500:
            problem = f"{reply.label}: {status} {_error_text(reply)}"
            self._breaker.record_failure(problem)
            raise CrmUnavailable(problem)
        try:
            body = json_object(reply)
        except CrmBadResponse as exc:
            self._breaker.record_failure(str(exc))
            raise
        if status < 400 and body.get("success") is True:
            self._breaker.record_success()
            return body
        return self._refused(reply, body)

    def _refused(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        """The error an answer with ``success: false`` (or an HTTP error status) is."""
        error_msg = body.get("errorMsg")
        message = error_msg if isinstance(error_msg, str) else ""
        errors = _errors_of(body.get("errors"))
        problem = f"{reply.label}: {reply.status} {clip(message or next(iter(errors.values()), '') or 'RetailCRM API Error')}"
        if message in CREDENTIAL_ERRORS or reply.status in (401, 403):
            # A new request will not help, and asking again on every call will not either (the breaker counts it).
            logger.error("retailCRM refused the request: %s", problem)
            self._breaker.record_failure(problem)
            raise CrmAuthError(problem, code=message)
        if reply.status == 404:
            self._breaker.record_success()  # retailCRM answered: there is nothing there
            raise RetailCrmNotFound(problem, code=message)
        self._breaker.record_success()
        raise RetailCrmRejected(problem, code=message, errors=errors)

    async def aclose(self) -> None:
        await self._client.aclose()


class RetailCrmNotFound(CrmError):
    """retailCRM answered 404 ``Not found``: the thing asked about is not there."""


def _errors_of(value: Any) -> dict[str, str]:
    """retailCRM's ``errors`` (a list of texts, or texts by field), as field -> text, clipped."""
    if isinstance(value, Mapping):
        return {clip(key, 80): clip(text) for key, text in value.items()}
    if isinstance(value, list):
        return {str(index): clip(text) for index, text in enumerate(value)}
    return {}


def _error_text(reply: Reply) -> str:
    """``errorMsg`` of an error body, else a note that there was none."""
    try:
        body = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "(no retailCRM error body)"
    message = body.get("errorMsg") if isinstance(body, dict) else None
    return clip(message) if isinstance(message, str) and message else "(no errorMsg)"
