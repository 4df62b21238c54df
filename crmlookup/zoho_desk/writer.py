"""Call outcomes on Zoho Desk tickets: a call activity (``POST /api/v1/calls``) on the ticket that routed the call.

Desk has call activities of its own (``Call.json`` of its API description):
``subject``, ``departmentId``, ``contactId``, ``startTime`` and ``status``
(``Completed``, ``Missed`` ...) are required, with ``direction``
(``inbound``), ``duration`` in seconds, ``ticketId``, ``ownerId`` and
``description``. That is what is written, rather than a comment: it shows on
the ticket's timeline and in Desk's call reports, is owned by the agent, and
can be listed per ticket (``GET /api/v1/tickets/{id}/calls``), which is how a
write whose answer was lost is found again: the call's Asterisk id ends its
subject (``... [1700000000.42]``). The ticket's department and contact are
read first (``GET /api/v1/tickets/{id}``): Desk requires them, and the
outcome does not carry them.

:class:`WithTicketCalls` puts this beside the CRM's own writer: call entries
whose record is a ticket go to Desk, everything else to the CRM, so a call a
ticket routed is logged in both, each exactly once (the outbox keeps a write
state per step: the CRM's call and the ticket's call are separate steps).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, Sequence

from ..errors import CrmBadResponse
from ..http import clip
from ..records import Owner
from ..writer import CallEntry, CallRecording, CrmWriter, Entry, RecordingWriter, WriteKind, WriteResult
from .api import DeskApi
from .backend import TICKETS

# A ticket's calls are read this many a page, and at most this many pages, when looking for a lost write.
CALLS_PAGE = 100
MAX_CALL_PAGES = 10
_DIGITS = frozenset("0123456789")


def is_ticket_call(entry: Entry) -> bool:
    return isinstance(entry, CallEntry) and entry.record is not None and entry.record.module == TICKETS


def marker(key: str) -> str:
    """How a call's key ends the subject of its Desk call activity."""
    return f"[{key}]"


class DeskCallWriter:
    """Creates call activities on Desk tickets, one request per call (Desk has no bulk create)."""

    name = "zoho_desk"
    writes = frozenset({WriteKind.CALL})
    max_batch = 20
    logs_ticket_calls = True

    def __init__(self, api: DeskApi, search_lag_s: float):
        self._api = api
        self.search_lag_s = search_lag_s

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        return [await self._create_one(entry) for entry in entries]

    async def _create_one(self, entry: Entry) -> WriteResult:
        if not isinstance(entry, CallEntry) or entry.record is None:
            return WriteResult(entry.key, error="only calls on a ticket go to Zoho Desk")
        ticket_id = entry.record.record_id
        try:
            ticket = await self._api.get(f"/tickets/{_numeric(ticket_id)}", purpose="write") or {}
            body = await self._api.request("POST", "/calls", json_body=call_body(entry, ticket), purpose="write")
        except CrmBadResponse as exc:
            if exc.code in ("", "INVALID_DATA", "RESOURCE_NOT_FOUND", "URL_NOT_FOUND") and "not JSON" not in str(exc):
                return WriteResult(entry.key, error=clip(str(exc)))  # refused for its data (or the ticket is gone)
            raise
        call_id = str((body or {}).get("id") or "")
        return WriteResult(entry.key, record_id=call_id) if call_id else WriteResult(entry.key, error="Zoho Desk returned no call id")

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        found: dict[str, str] = {}
        for entry in entries:
            if isinstance(entry, CallEntry) and entry.record is not None:
                call_id = await self._find(entry.record.record_id, marker(entry.key))
                if call_id:
                    found[entry.key] = call_id
        return found

    async def _find(self, ticket_id: str, wanted: str) -> str:
        for page in range(MAX_CALL_PAGES):
            params = {"limit": str(CALLS_PAGE), "from": str(page * CALLS_PAGE)}
            body = await self._api.get(f"/tickets/{_numeric(ticket_id)}/calls", params, purpose="write")
            calls = [call for call in (body or {}).get("data") or [] if isinstance(call, dict)]
            for call in calls:
                subject = call.get("subject")
                if isinstance(subject, str) and subject.endswith(wanted) and call.get("id"):
                    return str(call["id"])
            if len(calls) < CALLS_PAGE:
                break
        return ""

    async def users(self) -> Sequence[Owner]:
        return []

    async def check_access(self) -> None:
        await self._api.get("/agents", {"limit": "1"}, purpose="check")

    async def aclose(self) -> None:
        pass  # the connection belongs to the lookup backend


def call_body(entry: CallEntry, ticket: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /api/v1/calls`` body for ``entry`` on ``ticket`` (its department and contact)."""
    start = entry.start.astimezone(UTC)
    body: dict[str, Any] = {
        "subject": entry.subject[:300],
        "departmentId": str(ticket.get("departmentId") or ""),
        "contactId": str(ticket.get("contactId") or ""),
        "ticketId": entry.record.record_id if entry.record else "",
        "startTime": start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z",
        "status": "Completed" if entry.answered else "Missed",
        "direction": "inbound",
        "duration": str(max(0, entry.duration_seconds)),
        "description": entry.description,
    }
    if entry.owner_id and set(entry.owner_id) <= _DIGITS:
        body["ownerId"] = entry.owner_id
    if entry.recording_url:
        body["recordingUrl"] = entry.recording_url
    return body


def _numeric(record_id: str) -> str:
    """A Desk id as it may go into a path (ids are digits; anything else is refused here, not sent)."""
    if not record_id or not set(record_id) <= _DIGITS:
        raise CrmBadResponse(f"ticket id {clip(record_id, 40)!r} is not a Zoho Desk id", code="INVALID_DATA")
    return record_id


class WithTicketCalls:
    """The CRM's writer, and Desk's for the calls whose record is a ticket."""

    logs_ticket_calls = True

    def __init__(self, crm: CrmWriter, desk: DeskCallWriter):
        self.crm = crm
        self.desk = desk
        self.name = f"{crm.name}+zoho_desk"
        self.writes = crm.writes
        self.max_batch = min(crm.max_batch, desk.max_batch)
        self.search_lag_s = max(crm.search_lag_s, desk.search_lag_s)

    def _for(self, entries: Sequence[Entry]) -> CrmWriter:
        tickets = [is_ticket_call(entry) for entry in entries]
        if any(tickets) and not all(tickets):
            raise ValueError("a batch mixes calls on Desk tickets with CRM records")
        return self.desk if tickets and all(tickets) else self.crm

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        return list(await self._for(entries).create(kind, entries))

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        return await self._for(entries).find_existing(kind, entries)

    async def users(self) -> Sequence[Owner]:
        return await self.crm.users()

    async def check_access(self) -> None:
        await self.crm.check_access()
        await self.desk.check_access()

    async def aclose(self) -> None:
        await self.crm.aclose()


class WithTicketCallsAndRecordings(WithTicketCalls):
    """:class:`WithTicketCalls` for a CRM writer that also puts recordings on its Calls: those go to the CRM."""

    def __init__(self, crm: CrmWriter, desk: DeskCallWriter):
        super().__init__(crm, desk)
        assert isinstance(crm, RecordingWriter)
        self._recordings: RecordingWriter = crm

    async def attach_recording(self, recording: CallRecording, content: bytes) -> WriteResult:
        return await self._recordings.attach_recording(recording, content)

    async def find_recording(self, recording: CallRecording) -> str:
        return await self._recordings.find_recording(recording)

    async def link_recording(self, recording: CallRecording) -> WriteResult:
        return await self._recordings.link_recording(recording)


def with_ticket_calls(crm: CrmWriter, desk: DeskCallWriter) -> WithTicketCalls:
    """The CRM's writer with Desk's beside it, keeping what else the CRM's writer can do (recordings)."""
    return WithTicketCallsAndRecordings(crm, desk) if isinstance(crm, RecordingWriter) else WithTicketCalls(crm, desk)
