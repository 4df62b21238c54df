"""Writing calls, tasks and leads into Zoho CRM (API v8), in batches of up to 100.

* ``POST /crm/v8/{Calls,Tasks,Leads}`` with ``{"data": [...]}`` answers one
  entry per record, in order: ``{"status": "success", "details": {"id"}}`` or
  an error (``INVALID_DATA``, ``MANDATORY_NOT_FOUND``) naming the field. 201
  when all were added, 207 when some were, 400 when none were.
* A call is linked to the caller's record: ``Who_Id`` for a contact,
  ``What_Id`` with ``$se_module`` for a lead, deal or account (tasks alike).
  ``Call_Start_Time`` is ISO 8601 with its offset, ``Call_Duration`` ``mm:ss``.
* Zoho has no idempotency key, so each record carries the call's key where a
  search can find it: ``zoho.call_id_field`` when configured (a custom text
  field), else the ``Subject``, which then ends with ``[<call id>]``; a lead
  is found by its phone number.
  The criteria search compares loosely when conditions are joined, so every
  hit is checked against the exact value here.
* A call's recording goes on its Call after the Call exists: ``POST
  /crm/v8/Calls/{id}/Attachments`` (multipart, field ``file``; Zoho answers
  ``{"data": [{"code": "SUCCESS", "details": {"id"}}]}``, or 413
  ``FILE_SIZE_MORE_THAN_ALLOWED_SIZE`` for a file over its limit); an upload
  whose answer never came is looked for by its file name in ``GET
  /Calls/{id}/Attachments`` first. A link is written with ``PUT /Calls/{id}``
  into ``zoho.recording_field``, else as a line of the description.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Sequence

from ..errors import CrmBadResponse
from ..records import Owner
from ..writer import ALL_KINDS, AttachmentTooLarge, CallEntry, CallRecording, Entry, LeadEntry, TaskEntry, WriteKind, WriteResult
from .api import ZohoApi
from .http import clip
from .metadata import ActiveUsers
from .query import MAX_CRITERIA, criteria_value
from .records import record_id, records_of, text
from .settings import ZohoSettings

MAX_DURATION_MINUTES = 999
# Zoho text fields hold 255 characters unless an admin made them shorter.
MAX_SUBJECT_LENGTH = 255
MAX_NAME_LENGTH = 80


def duration(seconds: int) -> str:
    """``Call_Duration`` as Zoho reads it: minutes and seconds, ``"07:05"``."""
    minutes, rest = divmod(max(0, seconds), 60)
    if minutes > MAX_DURATION_MINUTES:
        minutes, rest = MAX_DURATION_MINUTES, 59
    return f"{minutes:02d}:{rest:02d}"


def zoho_datetime(moment: datetime) -> str:
    """``2024-05-01T10:30:00+02:00``: seconds, with the offset (Zoho refuses fractions)."""
    if moment.tzinfo is None:
        raise ValueError("a Zoho date-time needs a time zone")
    return moment.isoformat(timespec="seconds")


class ZohoWriter:
    """Creates Calls, Tasks and Leads through the lookup backend's API client."""

    name = "zoho"
    writes = ALL_KINDS
    max_batch = 100

    def __init__(self, api: ZohoApi, settings: ZohoSettings, users: ActiveUsers | None = None):
        self._api = api
        self._call_id_field = settings.call_id_field
        self._recording_field = settings.recording_field
        self.search_lag_s = float(settings.search_lag_s)
        # The lookup backend's copy when given: the org's users are fetched once for both.
        self._users = users or ActiveUsers(api, settings.user_extension_field, settings.users_ttl_s)

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        if not entries:
            return []
        if len(entries) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} records per request")
        body = await self._api.request("POST", f"/{kind.value}", json_body={"data": [self._record(e) for e in entries]}, per_record=True)
        answers = (body or {}).get("data")
        if not isinstance(answers, list) or len(answers) != len(entries):
            raise CrmBadResponse(f"{kind.value} insert: expected {len(entries)} answer(s), got {len(answers) if isinstance(answers, list) else 'none'}")
        return [_result(entry, answer) for entry, answer in zip(entries, answers)]

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        field, marker = self._marker(kind)
        found: dict[str, str] = {}
        pending = list(entries)
        for start in range(0, len(pending), MAX_CRITERIA):
            chunk = pending[start : start + MAX_CRITERIA]
            values = sorted({marker(entry) for entry in chunk})
            conditions = [f"({field}:equals:{criteria_value(value)})" for value in values]
            criteria = conditions[0] if len(conditions) == 1 else "(" + "or".join(conditions) + ")"
            body = await self._api.get(f"/{kind.value}/search", {"criteria": criteria, "fields": field, "per_page": "200"}, purpose="write")
            by_value: dict[str, str] = {}
            for record in records_of(body, f"{kind.value} search"):
                by_value.setdefault(text(record, field, f"{kind.value} record").casefold(), record_id(record, f"{kind.value} record"))
            for entry in chunk:
                hit = by_value.get(marker(entry).casefold())
                if hit:
                    found[entry.key] = hit
        return found

    async def users(self) -> Sequence[Owner]:
        return [Owner(u.id, u.name, u.email, u.extensions) for u in await self._users.all(None)]

    async def check_access(self) -> None:
        # The smallest authenticated request there is: who we are (the users scope the lookups need anyway).
        await self._api.get("/users", {"type": "CurrentUser"})

    async def aclose(self) -> None:
        """The API client belongs to the lookup backend, which closes it."""

    # -- recordings ------------------------------------------------------------------

    async def attach_recording(self, recording: CallRecording, content: bytes) -> WriteResult:
        path = f"/{recording.call.module}/{recording.call.record_id}/Attachments"
        try:
            answer = await self._api.fetch(
                "POST", path, files={"file": (recording.file_name, content, _audio_type(recording.file_name))}, per_record=True, purpose="write"
            )
        except CrmBadResponse as exc:
            if exc.code == TOO_LARGE:
                raise AttachmentTooLarge(str(exc), code=exc.code) from None
            raise
        answers = (answer.body or {}).get("data")
        if not isinstance(answers, list) or len(answers) != 1:
            raise CrmBadResponse(f"POST {path}: expected one answer, got {clip(answer.body, 120)}")
        return _result(_Keyed(recording.key), answers[0])

    async def find_recording(self, recording: CallRecording) -> str:
        path = f"/{recording.call.module}/{recording.call.record_id}/Attachments"
        page = 1
        while True:
            body = await self._api.get(path, {"fields": "id,File_Name", "per_page": "200", "page": str(page)}, purpose="write")
            for record in records_of(body, "attachment list"):
                if isinstance(record, dict) and record.get("File_Name") == recording.file_name:
                    return record_id(record, "attachment")
            info = (body or {}).get("info")
            if not (isinstance(info, dict) and info.get("more_records") is True) or page >= 50:
                return ""
            page += 1

    async def link_recording(self, recording: CallRecording) -> WriteResult:
        if self._recording_field:
            fields: dict[str, Any] = {self._recording_field: recording.link}
        else:
            fields = {"Description": f"{recording.description}\nRecording: {recording.link}".lstrip("\n")}
        path = f"/{recording.call.module}/{recording.call.record_id}"
        body = await self._api.request("PUT", path, json_body={"data": [{"id": recording.call.record_id, **fields}]}, per_record=True)
        answers = (body or {}).get("data")
        if not isinstance(answers, list) or len(answers) != 1:
            raise CrmBadResponse(f"PUT {path}: expected one answer, got {clip(body, 120)}")
        return _result(_Keyed(recording.key), answers[0])

    # -- records as Zoho wants them -------------------------------------------------

    def _marker(self, kind: WriteKind) -> tuple[str, Callable[[Entry], str]]:
        """The field a record of ``kind`` is found by, and its value for an entry."""
        if kind is WriteKind.LEAD:
            return "Phone", lambda entry: entry.phone
        if self._call_id_field:
            return self._call_id_field, lambda entry: entry.key
        return "Subject", self._subject

    def _subject(self, entry: Entry) -> str:
        """The Subject as written: with the call's key in brackets unless a field of its own holds it."""
        subject = entry.subject  # type: ignore[union-attr]
        if self._call_id_field:
            return subject
        marker = f" [{entry.key}]"
        return subject[: MAX_SUBJECT_LENGTH - len(marker)] + marker

    def _record(self, entry: Entry) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if isinstance(entry, CallEntry):
            record.update(
                Subject=self._subject(entry),
                Call_Type="Inbound" if entry.answered else "Missed",
                Call_Start_Time=zoho_datetime(entry.start),
                Call_Duration=duration(entry.duration_seconds),
                Description=entry.description,
            )
        elif isinstance(entry, TaskEntry):
            record.update(
                Subject=self._subject(entry),
                Due_Date=entry.due.date().isoformat(),
                Status="Not Started",
                Description=entry.description,
                # Due "in 4 hours" is a time, not a date: a reminder at that moment.
                Remind_At={"ALARM": f"FREQ=NONE;ACTION=POPUP;TRIGGER=DATE-TIME:{zoho_datetime(entry.due)}"},
            )
        else:
            assert isinstance(entry, LeadEntry)
            record.update(
                Last_Name=entry.name[:MAX_NAME_LENGTH],
                # Many orgs' lead layouts require a company; an admin renames it later.
                Company=f"Unknown ({entry.phone})",
                Phone=entry.phone,
                Description=entry.description,
            )
        if entry.owner_id:
            record["Owner"] = {"id": entry.owner_id}
        if self._call_id_field and not isinstance(entry, LeadEntry):
            record[self._call_id_field] = entry.key
        linked = getattr(entry, "record", None)
        if linked is not None:
            if linked.module == "Contacts":
                record["Who_Id"] = {"id": linked.record_id}
            else:
                record["What_Id"] = {"id": linked.record_id}
                record["$se_module"] = linked.module
        who = getattr(entry, "who", None)
        if who is not None and who.module == "Contacts" and "Who_Id" not in record:
            record["Who_Id"] = {"id": who.record_id}  # a deal's call is the contact's too
        return record


TOO_LARGE = "FILE_SIZE_MORE_THAN_ALLOWED_SIZE"
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg", "oga": "audio/ogg", "opus": "audio/ogg", "flac": "audio/flac", "gsm": "audio/x-gsm"}


def _audio_type(name: str) -> str:
    return _AUDIO_TYPES.get(name.rpartition(".")[2].lower(), "application/octet-stream")


class _Keyed:
    """What :func:`_result` needs of an entry: its key."""

    def __init__(self, key: str):
        self.key = key


def _result(entry: Entry | _Keyed, answer: Any) -> WriteResult:
    if not isinstance(answer, dict):
        return WriteResult(entry.key, error="Zoho answered this record with something that is not an object")
    if answer.get("status") == "success":
        details = answer.get("details")
        try:
            return WriteResult(entry.key, record_id=record_id(details if isinstance(details, dict) else {}, "inserted record"))
        except CrmBadResponse as exc:
            return WriteResult(entry.key, error=str(exc))
    given_code, given_message, given_details = answer.get("code"), answer.get("message"), answer.get("details")
    code = given_code if isinstance(given_code, str) else "ERROR"
    message = given_message if isinstance(given_message, str) else ""
    api_name = given_details.get("api_name") if isinstance(given_details, dict) else None
    field = api_name if isinstance(api_name, str) else ""
    return WriteResult(entry.key, error=clip(f"{code}: {message}" + (f" ({field})" if field else "")))
