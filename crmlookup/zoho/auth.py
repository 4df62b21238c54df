"""OAuth2 for Zoho: access tokens minted from the refresh token, one refresh at a time.

Zoho's accounts server answers ``POST /oauth/v2/token`` (grant_type
``refresh_token``) with ``{"access_token", "expires_in", "api_domain",
"token_type"}``. A refresh token that is wrong or revoked is refused with HTTP
200 and ``{"error": "invalid_code"}``; refreshing too often gets HTTP 400 and
``{"error": "Access Denied", "error_description": "You have made too many
requests continuously..."}``. Zoho mints at most 10 access tokens per refresh
token in 10 minutes, so refreshes are counted here and never raced: callers
that need a token while one is being minted wait for it.

The credentials travel only in the form body of that request (never in a
URL, so no access log or HTTP library log line can show them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import httpx

from ..condition import Condition
from ..errors import CrmAuthError, CrmError, CrmRateLimited, CrmUnavailable
from ..secrets import Secret
from ..stats import RequestStats, result_of_error, result_of_status
from .http import Reply, clip, exchange, json_object
from .token_file import TokenFile

logger = logging.getLogger("crmroute.zoho")

TOKEN_PATH = "/oauth/v2/token"
# Zoho: at most 10 access tokens per refresh token per 10 minutes.
REFRESH_LIMIT = 10
REFRESH_WINDOW_S = 600.0
# After the accounts server refused us, leave it alone this long (a revoked
# token stays revoked; hammering it only adds to the throttling).
REFUSED_PAUSE_S = 60.0
# A token is renewed this long before Zoho says it expires (capped at a tenth
# of its life, for short-lived tokens).
EXPIRY_MARGIN_S = 60.0
MAX_TOKEN_LIFE_S = 86_400


@dataclass(frozen=True)
class AccessToken:
    """A minted access token and where to use it."""

    value: Secret = field(repr=False)
    api_domain: str
    expires_at: float  # on the monotonic clock

    @property
    def header(self) -> str:
        return f"Zoho-oauthtoken {self.value.reveal()}"


class TokenSource:
    """Hands out a valid access token, minting a new one only when needed."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        accounts_server: str,
        *,
        client_id: Secret,
        client_secret: Secret,
        refresh_token: Secret,
        default_api_domain: str,
        token_file: TokenFile | None = None,
        clock: Callable[[], float] = time.monotonic,
        stats: RequestStats | None = None,
    ):
        self._client = client
        self._url = accounts_server.rstrip("/") + TOKEN_PATH
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self._default_api_domain = default_api_domain
        self._file = token_file
        self._clock = clock
        self._token: AccessToken | None = None
        self._refused: AccessToken | None = None
        self._lock = asyncio.Lock()
        self._minted: collections.deque[float] = collections.deque()
        self._paused_until = 0.0
        self._pause_error: CrmAuthError | CrmRateLimited | None = None
        self.refreshes = 0
        self.stats = stats if stats is not None else RequestStats("zoho")
        self.credentials = Condition(logger, "Zoho refused the credentials", "Zoho accepts the credentials again", clock=clock)

    def __repr__(self) -> str:
        return f"TokenSource({self._url!r})"

    async def get(self, trace: list[str] | None = None) -> AccessToken:
        """A token valid now; waits for a refresh in progress instead of starting another."""
        token = self._token
        if token is not None and self._clock() < token.expires_at:
            return token
        async with self._lock:
            token = self._token
            if token is not None and self._clock() < token.expires_at:
                return token  # minted by the caller we waited for
            if self._file is None:
                self._token = await self._mint(trace)
            else:
                async with self._file.locked():
                    token = self._shared(trace)
                    if token is None:
                        token = await self._mint(trace)
                        self._file.save(token.value.reveal(), token.api_domain, token.expires_at - self._clock())
                    self._token = token
            return self._token

    def _shared(self, trace: list[str] | None) -> AccessToken | None:
        """The token another process stored, unless it is the one Zoho just refused."""
        stored = self._file.load() if self._file is not None else None
        if stored is None:
            return None
        value, api_domain, seconds_left = stored
        if self._refused is not None and value == self._refused.value.reveal():
            return None
        if trace is not None:
            trace.append(f"access token from zoho.token_cache_file (valid {seconds_left:.0f} s more)")
        return AccessToken(Secret(value), self._api_domain(api_domain), self._clock() + seconds_left)

    def invalidate(self, token: AccessToken) -> None:
        """Zoho refused ``token`` (401 INVALID_TOKEN): the next :meth:`get` mints a new one.

        Only the token that was refused is dropped, so a burst of requests that
        all failed with the same old token causes one refresh, not one each.
        """
        if self._token is token:
            self._token = None
            self._refused = token

    async def _mint(self, trace: list[str] | None) -> AccessToken:
        now = self._clock()
        if now < self._paused_until and self._pause_error is not None:
            raise type(self._pause_error)(f"{self._pause_error} (not asking again for {self._paused_until - now:.0f} s)")
        while self._minted and now - self._minted[0] > REFRESH_WINDOW_S:
            self._minted.popleft()
        if len(self._minted) >= REFRESH_LIMIT:
            wait = REFRESH_WINDOW_S - (now - self._minted[0])
            raise CrmRateLimited(f"{REFRESH_LIMIT} access tokens minted in {REFRESH_WINDOW_S / 60:.0f} minutes; next in {wait:.0f} s", retry_after=wait)
        request = self._client.build_request(
            "POST",
            self._url,
            data={
                "grant_type": "refresh_token",
                "client_id": self._client_id.reveal(),
                "client_secret": self._client_secret.reveal(),
                "refresh_token": self._refresh_token.reveal(),
            },
        )
        self._minted.append(now)
        started = time.perf_counter()
        try:
            reply = await exchange(self._client, request, trace)
        except CrmError as exc:
            self.stats.record("token", result_of_error(exc), time.perf_counter() - started)
            raise
        self.stats.record("token", result_of_status(reply.status), time.perf_counter() - started)
        try:
            token = self._read(reply)
        except CrmAuthError:
            self.stats.token_refusals += 1
            raise
        self.refreshes += 1
        self.stats.token_mints += 1
        self.credentials.recovered()
        return token

    def _read(self, reply: Reply) -> AccessToken:
        if reply.status >= 500:
            raise CrmUnavailable(f"Zoho accounts server answered {reply.status}")
        data = json_object(reply)
        error = data.get("error")
        if reply.status != 200 or error is not None:
            reason = clip(data.get("error_description") or error or f"status {reply.status}")
            if reply.status == 400 and "too many requests" in reason.lower():
                raise self._pause(CrmRateLimited(f"Zoho refused to mint a token: {reason}"))
            raise self._pause(CrmAuthError(f"Zoho refused the refresh token: {reason}"))
        value = data.get("access_token")
        life = data.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(life, int) or isinstance(life, bool) or not 0 < life <= MAX_TOKEN_LIFE_S:
            raise CrmAuthError("Zoho's token answer has no usable access_token/expires_in")
        margin = min(EXPIRY_MARGIN_S, life / 10)
        return AccessToken(Secret(value), self._api_domain(data.get("api_domain")), self._clock() + life - margin)

    def _api_domain(self, offered: object) -> str:
        """The ``api_domain`` the token answer names (where this org's data lives), if it is a URL."""
        if isinstance(offered, str) and offered:
            parts = urlsplit(offered)
            if parts.scheme in ("https", "http") and parts.hostname and not parts.path.strip("/") and not parts.query:
                return offered.rstrip("/")
            logger.warning("ignoring api_domain %r from the token answer; using %s", clip(offered, 80), self._default_api_domain)
        return self._default_api_domain

    def _pause(self, error: CrmAuthError | CrmRateLimited) -> CrmAuthError | CrmRateLimited:
        """Remember a refusal so the next calls get it at once; returns ``error`` to raise."""
        self._paused_until = self._clock() + REFUSED_PAUSE_S
        self._pause_error = error
        if isinstance(error, CrmAuthError):
            # Once when it starts (and once when a token is minted again), not at every retry.
            if not self.credentials.failing(f"{error} (asked again every {REFUSED_PAUSE_S:.0f} s)"):
                logger.debug("%s (next try in %.0f s)", error, REFUSED_PAUSE_S)
        else:
            logger.error("%s (next try in %.0f s)", error, REFUSED_PAUSE_S)
        return error
