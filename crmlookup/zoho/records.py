"""Zoho record JSON, read defensively: what we need or a :class:`CrmBadResponse`.

Records come back as ``{"data": [{...}, ...], "info": {...}}``; lookup fields
such as ``Owner`` or ``Contact_Name`` as ``{"name", "id"}`` (``Owner`` also
carries ``email``). Ids are digits; anything else in an id is refused, since an
id becomes part of a request path (``/Contacts/{id}/Deals``).
"""

from __future__ import annotations

import re
from datetime import datetime, UTC
from typing import Any

from ..errors import CrmBadResponse
from ..records import Owner
from .http import clip

_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def records_of(body: dict[str, Any] | None, what: str) -> list[dict[str, Any]]:
    """The ``data`` list of a records answer (``[]`` for 204 No Content)."""
    if body is None:
        return []
    data = body.get("data")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise CrmBadResponse(f"{what}: 'data' is not a list of records")
    return data


def more_records(body: dict[str, Any] | None) -> bool:
    info = body.get("info") if body else None
    return isinstance(info, dict) and info.get("more_records") is True


def record_id(record: dict[str, Any], what: str) -> str:
    return _id(record.get("id"), f"{what}: record id")


def text(record: dict[str, Any], field: str, what: str) -> str:
    """A text field; empty when missing or null."""
    value = record.get(field)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CrmBadResponse(f"{what}: field {field} is a {type(value).__name__}, expected text")
    return str(value)


def lookup_name(record: dict[str, Any], field: str) -> str:
    """The name in a lookup field, or the field itself when Zoho gives plain text."""
    value = record.get(field)
    if isinstance(value, dict):
        name = value.get("name")
        return name if isinstance(name, str) else ""
    return value if isinstance(value, str) else ""


def owner(record: dict[str, Any], what: str) -> Owner | None:
    """The record's ``Owner`` (``{"name", "id", "email"}``), or ``None`` when it has none."""
    value = record.get("Owner")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CrmBadResponse(f"{what}: Owner is a {type(value).__name__}, expected an object")
    owner_id = _id(value.get("id"), f"{what}: Owner.id")
    name, email = value.get("name"), value.get("email")
    return Owner(owner_id, name if isinstance(name, str) else "", email if isinstance(email, str) else "")


def _id(value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise CrmBadResponse(f"{what} is not an id: {clip(repr(value), 60)}")
    return value


def lookup_id(record: dict[str, Any], field: str, what: str) -> str | None:
    """The id in a lookup field (``{"name", "id"}``), or None when it is empty."""
    value = record.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CrmBadResponse(f"{what}: {field} is a {type(value).__name__}, expected a lookup")
    return _id(value.get("id"), f"{what}: {field}.id") if value.get("id") is not None else None


def modified_at(record: dict[str, Any], what: str) -> float:
    """``Modified_Time`` (ISO 8601 with offset) as seconds since the epoch; 0 when absent."""
    value = record.get("Modified_Time")
    if value is None:
        return 0.0
    if not isinstance(value, str):
        raise CrmBadResponse(f"{what}: Modified_Time is a {type(value).__name__}, expected a time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CrmBadResponse(f"{what}: Modified_Time {clip(value, 40)!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
