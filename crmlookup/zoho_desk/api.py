"""Requests to the Zoho Desk API: authenticated, with the orgId header, bounded, calm under trouble.

Desk answers errors as ``{"errorCode", "message"}`` (``INVALID_OAUTH`` for
a token it no longer takes, ``INVALID_DATA`` with ``errors`` per field,
``FORBIDDEN``, ``TOO_MANY_REQUESTS``) and 204 with no body when a search or
a listing finds nothing. As for Zoho CRM (:mod:`crmlookup.zoho.api`): a
token refused with 401 is renewed once and the request sent once more; a 429
opens the circuit breaker for a back-off, a run of server errors and
timeouts opens it for ``breaker_open_s``; while it is open no request leaves.
The token comes from Zoho's accounts server, as the CRM's does, through the
same :class:`~crmlookup.zoho.auth.TokenSource`; the request path is the
CRM's too (:class:`~crmlookup.zoho_common.api.OAuthApi`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import httpx

from ..circuit import CircuitBreaker
from ..http import Reply, clip, json_object
from ..stats import RequestStats
from ..zoho.auth import AccessToken, TokenSource
from ..zoho_common.api import ApiCall, OAuthApi

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


class DeskApi(OAuthApi):
    """The API of one Desk portal (org), as JSON in and out; every request carries the portal's ``orgId``."""

    service = "Zoho Desk"
    product = "Zoho Desk"
    stats_name = "zoho_desk"
    meanwhile = "the Tickets rule is answered from the cache meanwhile"
    logger = logger

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
        super().__init__(client, tokens, breaker, max_concurrency=max_concurrency, stats=stats)
        self._fixed_headers = {"orgId": org_id}
        self._base = desk_url.rstrip("/") + API_PREFIX

    async def get(self, path: str, params: Mapping[str, str] | None = None, trace: list[str] | None = None, *,
                  purpose: str = "lookup") -> dict[str, Any] | None:
        """``GET /api/v1{path}``: the JSON object, or None for 204 (nothing found)."""
        return await self.request("GET", path, params=params, trace=trace, purpose=purpose)

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None, json_body: Any = None,
                      trace: list[str] | None = None, purpose: str = "write") -> dict[str, Any] | None:
        """One API call; a :class:`~crmlookup.errors.CrmError` subclass when it fails (any 401 renews the token once)."""
        reply = await self._send_renewing(ApiCall(method, path, params, json_body), trace, purpose)
        return self._interpret(reply)

    def _base_url(self, token: AccessToken) -> str:
        # Desk's host is the data centre's (or the settings' api_url), whatever the token's api_domain says.
        return self._base

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
        self._refused(reply, code, described)
