"""One HTTP exchange with a CRM, bounded and traced.

Everything that can go wrong below HTTP (refused connection, timeout, a peer
that hangs up, an endless body) becomes a :class:`~crmlookup.errors.CrmError`
here; what the status code means is decided by the caller (the accounts
server and the CRM API speak differently).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote

import httpx

from .errors import CrmBadResponse, CrmTimeout, CrmUnavailable

# No answer we read is anywhere near this; a larger one is refused, not buffered.
MAX_BODY_BYTES = 4 * 1024 * 1024
# CRM text quoted in errors and steps is cut to this many characters.
MAX_QUOTED_CHARS = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Reply:
    """A complete HTTP answer."""

    status: int
    body: bytes
    headers: httpx.Headers
    label: str  # "GET /crm/v8/Leads/search" for errors: what was asked, not the whole query


def pooled_client(*, connect_timeout_ms: int, read_timeout_ms: int, max_concurrency: int) -> httpx.AsyncClient:
    """The one HTTP client a CRM backend keeps: JSON answers, no redirects, a pool a little
    larger than the requests it sends at once (which its own semaphore bounds)."""
    timeout = httpx.Timeout(
        connect=connect_timeout_ms / 1000,
        read=read_timeout_ms / 1000,
        write=read_timeout_ms / 1000,
        pool=None,  # waiting for a connection is bounded by the caller's semaphore
    )
    limits = httpx.Limits(max_connections=max_concurrency + 2, max_keepalive_connections=max_concurrency + 2)
    return httpx.AsyncClient(timeout=timeout, limits=limits, headers={"Accept": "application/json"}, follow_redirects=False)


def encode_query(params: Mapping[str, str]) -> str:
    """``a=1&b=x%2By``: every reserved character escaped (``+`` as ``%2B``, space as ``%20``).

    CRMs read a bare ``+`` in a query as a space (Zoho, retailCRM), so a phone
    number in E.164 must go as ``%2B``. Commas stay readable in ``fields=A,B``.
    """
    return "&".join(f"{quote(key, safe='')}={quote(value, safe=',')}" for key, value in params.items())


def clip(text: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """CRM or server text, safe to put in an error or a step: no control characters, bounded."""
    flat = _CONTROL.sub(" ", str(text))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


async def exchange(client: httpx.AsyncClient, request: httpx.Request, trace: list[str] | None) -> Reply:
    """Send ``request`` and read the whole answer (at most :data:`MAX_BODY_BYTES`).

    Appends ``GET /path?query -> 200 (12 ms)`` to ``trace``. Raises
    :class:`CrmTimeout` or :class:`CrmUnavailable` for transport failures and
    :class:`CrmBadResponse` for an oversized body.
    """
    # Steps show the whole request (what was searched); errors name the endpoint,
    # so the reason a call carries is the problem, not a long query string.
    shown = f"{request.method} {request.url.raw_path.decode('ascii', 'replace')}"
    label = f"{request.method} {request.url.path}"
    started = time.perf_counter()
    try:
        response = await client.send(request, stream=True)
        try:
            body = await _read_bounded(response, label)
        finally:
            await response.aclose()
    except httpx.TimeoutException as exc:
        _note(trace, shown, f"timed out ({type(exc).__name__})", started)
        raise CrmTimeout(f"{label}: no answer in time") from None
    except httpx.HTTPError as exc:
        _note(trace, shown, f"failed ({clip(exc) or type(exc).__name__})", started)
        raise CrmUnavailable(f"{label}: {clip(exc) or type(exc).__name__}") from None
    except CrmBadResponse:
        _note(trace, shown, "body too large", started)
        raise
    _note(trace, shown, str(response.status_code), started)
    return Reply(response.status_code, body, response.headers, label)


async def _read_bounded(response: httpx.Response, label: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise CrmBadResponse(f"{label}: body of {declared} bytes is larger than {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise CrmBadResponse(f"{label}: body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _note(trace: list[str] | None, label: str, outcome: str, started: float) -> None:
    if trace is not None:
        trace.append(f"{label} -> {outcome} ({(time.perf_counter() - started) * 1000:.0f} ms)")


def json_object(reply: Reply) -> dict[str, Any]:
    """The body as a JSON object; :class:`CrmBadResponse` for anything else."""
    try:
        data = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CrmBadResponse(f"{reply.label}: status {reply.status} with a body that is not JSON ({clip(exc, 80)})") from None
    if not isinstance(data, dict):
        raise CrmBadResponse(f"{reply.label}: expected a JSON object, got {type(data).__name__}")
    return data


def retry_after(reply: Reply) -> float | None:
    """The answer's ``Retry-After`` in seconds (0 to an hour), None when absent or unreadable."""
    value = reply.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None
