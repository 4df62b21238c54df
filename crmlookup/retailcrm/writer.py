"""The call history, uploaded to retailCRM: ``POST /api/v5/telephony/calls/upload``.

retailCRM keeps calls, not tasks or leads written by us: its own triggers
(a missed call -> a task for the manager) work from the history. So this
writer takes calls only, and the outbox plans nothing else for it.

Each call carries ``externalId`` = the Asterisk unique id. retailCRM answers
an upload with ``processedCallsCount`` and ``duplicateCalls`` (the external
ids it already had): a call uploaded again after an answer that never came
back is reported there, not stored twice, so it counts as written. The call
history cannot be searched by external id, so :meth:`find_existing` finds
nothing and a call whose upload is uncertain is simply uploaded again.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import CrmBadResponse
from ..http import clip
from ..records import Owner
from ..writer import CallEntry, Entry, WriteKind, WriteResult
from .api import RetailCrmApi, RetailCrmRejected
from .backend import RetailCrmBackend, person_name

# retailCRM's call results (CallResult in its API clients). It has no
# "missed": an inbound call nobody answered is "no answer".
RESULT_OF_DIAL_STATUS = {
    "ANSWER": "answered",
    "NOANSWER": "no answer",
    "CANCEL": "no answer",  # the caller hung up while it rang
    "BUSY": "busy",
    "CHANUNAVAIL": "failed",
    "CONGESTION": "failed",
    "INVALIDARGS": "failed",
    "DONTCALL": "failed",
    "TORTURE": "failed",
}
_USER_ID = re.compile(r"[0-9]{1,18}")
_CODE = re.compile(r"[0-9A-Za-z_.+*#-]{1,64}")


def call_result(entry: CallEntry) -> str:
    """The result retailCRM's enum has for a call: answered, no answer, busy, failed."""
    if entry.answered:
        return "answered"
    return RESULT_OF_DIAL_STATUS.get(entry.dial_status.upper(), "no answer")


class RetailCrmWriter:
    """Uploads calls through the lookup backend's API client."""

    name = "retailcrm"
    writes = frozenset({WriteKind.CALL})
    # Calls per upload: retailCRM's documents give no limit; 50 keeps a request small.
    max_batch = 50
    search_lag_s = 0.0

    def __init__(self, backend: RetailCrmBackend):
        self._backend = backend
        self._api: RetailCrmApi = backend.api
        self._site = backend.settings.site

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        if kind is not WriteKind.CALL:
            raise ValueError(f"retailCRM takes calls only, not {kind.value}")
        calls = [entry for entry in entries if isinstance(entry, CallEntry)]
        if not calls:
            return []
        if len(calls) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} calls per upload")
        try:
            await self._upload(calls)
        except RetailCrmRejected as exc:
            if len(calls) == 1:
                return [WriteResult(calls[0].key, error=_rejection(exc))]
            # One refused call refuses the upload: each goes alone, so only it is kept back.
            results: list[WriteResult] = []
            for call in calls:
                results += await self.create(kind, [call])
            return results
        return [WriteResult(call.key, record_id=call.key) for call in calls]

    async def _upload(self, calls: list[CallEntry]) -> None:
        body = await self._api.post("/telephony/calls/upload", {"calls": [self._call(call) for call in calls]}, purpose="write")
        duplicates = body.get("duplicateCalls")
        processed = body.get("processedCallsCount")
        if not isinstance(processed, int) or (duplicates is not None and not isinstance(duplicates, list)):
            raise CrmBadResponse(f"POST /api/v5/telephony/calls/upload: unexpected answer {clip(body, 120)}")

    def _call(self, entry: CallEntry) -> dict[str, Any]:
        call: dict[str, Any] = {
            # The account's time, as retailCRM reads it: the outcome's time zone ([outcomes] timezone).
            "date": entry.start.strftime("%Y-%m-%d %H:%M:%S"),
            "type": "in",
            "phone": entry.caller_number,
            "result": call_result(entry),
            "duration": entry.duration_seconds,
            "externalId": entry.key,
        }
        if _CODE.fullmatch(entry.extension):
            call["code"] = entry.extension  # the manager's extension: retailCRM finds the manager by it
        elif _USER_ID.fullmatch(entry.owner_id):
            call["userId"] = int(entry.owner_id)
        if entry.recording_url:
            call["recordUrl"] = entry.recording_url
        if self._site:
            call["site"] = self._site
        return call

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        return {}  # not searchable; an upload again is reported as a duplicate instead

    async def users(self) -> Sequence[Owner]:
        """The account's active users (their extensions live in the telephony settings, not here)."""
        users = await self._backend.list_users(purpose="write")
        return [
            Owner(clip(user["id"], 40), person_name(user), clip(user.get("email") or "", 120))
            for user in users
            if user.get("active") not in (False, "false")
        ]

    async def check_access(self) -> None:
        await self._api.get("/credentials", purpose="check", versioned=False)

    async def aclose(self) -> None:
        pass  # the client belongs to the lookup backend


def _rejection(exc: RetailCrmRejected) -> str:
    details = "; ".join(f"{field}: {text}" for field, text in exc.errors.items())
    return f"{exc}" + (f" ({details})" if details else "")
