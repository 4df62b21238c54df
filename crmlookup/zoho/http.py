"""Zoho's error envelope, read from an HTTP answer (the exchange itself is :mod:`crmlookup.http`)."""

from __future__ import annotations

import json
from typing import Any

from ..http import Reply, clip, encode_query, exchange, json_object

__all__ = ["Reply", "clip", "describe_error", "encode_query", "error_code", "exchange", "json_object"]


def _error_envelope(reply: Reply) -> dict[str, Any] | None:
    """The body if it is a Zoho error envelope (``{"code", "details", "message", "status"}``)."""
    try:
        data = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("code"), str) else None


def error_code(reply: Reply) -> str:
    """Zoho's ``code`` from an error envelope, or ""."""
    envelope = _error_envelope(reply)
    return envelope["code"] if envelope else ""


def describe_error(reply: Reply) -> str:
    """``401 INVALID_TOKEN: invalid oauth token`` from an error envelope, clipped."""
    envelope = _error_envelope(reply)
    if envelope is None:
        return f"{reply.status} (no Zoho error envelope)"
    message = envelope.get("message")
    text = f"{envelope['code']}: {message}" if isinstance(message, str) and message else envelope["code"]
    return f"{reply.status} {clip(text)}"
