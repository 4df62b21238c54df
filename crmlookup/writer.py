"""The interface for writing what happened on the phone into a CRM.

A writer creates three kinds of records: calls (the activity on the caller's
record), tasks (a call back, a note for the owner) and leads (an unknown
caller). Every entry carries a ``key`` derived from the call's unique id; the
writer stores it in the record so :meth:`CrmWriter.find_existing` can tell,
after an attempt whose result we never saw, whether the record was created.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, Sequence, runtime_checkable

from .errors import CrmBadResponse
from .records import Owner


class WriteKind(str, enum.Enum):
    """What a writer creates, by the CRM module it lands in."""

    LEAD = "Leads"
    CALL = "Calls"
    TASK = "Tasks"


# Every kind: what a writer that creates leads, calls and tasks declares.
ALL_KINDS = frozenset(WriteKind)


@dataclass(frozen=True)
class RecordRef:
    """A CRM record an activity is linked to (``Contacts``/``C-7``)."""

    module: str
    record_id: str


@dataclass(frozen=True)
class CallEntry:
    """A call activity on a record."""

    key: str
    answered: bool  # Inbound when answered, Missed otherwise
    start: datetime  # timezone-aware
    duration_seconds: int
    subject: str
    description: str
    caller_number: str
    owner_id: str = ""  # empty: the CRM's default owner
    record: RecordRef | None = None
    # The person who called, when ``record`` is not one (a deal's contact).
    who: RecordRef | None = None
    # Asterisk's DIALSTATUS (ANSWER, NOANSWER, BUSY, CHANUNAVAIL ...), empty when unknown.
    dial_status: str = ""
    # The extension that answered, else the one the route rang; empty when neither is known.
    extension: str = ""
    # Where the call's recording is served (an http(s) URL), empty when there is none.
    recording_url: str = ""
    # The recording's file on this machine, for a CRM that keeps the path (the local directory).
    recording_path: str = ""


@dataclass(frozen=True)
class TaskEntry:
    """A task for a user, e.g. call back a missed caller."""

    key: str
    subject: str
    description: str
    due: datetime  # timezone-aware
    owner_id: str = ""
    record: RecordRef | None = None
    who: RecordRef | None = None


@dataclass(frozen=True)
class LeadEntry:
    """A new lead for a caller the CRM does not know."""

    key: str
    name: str
    phone: str  # E.164
    description: str
    owner_id: str = ""


Entry = CallEntry | TaskEntry | LeadEntry


@dataclass(frozen=True)
class WriteResult:
    """The CRM's answer for one entry of a batch: the new record's id, or why it was refused."""

    key: str
    record_id: str = ""
    error: str = ""  # the CRM's own words for a record it rejected (bad data)

    @property
    def ok(self) -> bool:
        return bool(self.record_id) and not self.error


class CrmWriter(Protocol):
    """Creates calls, tasks and leads in a CRM, in batches.

    ``create`` returns one :class:`WriteResult` per entry, in order; an entry
    the CRM refuses for its data has ``error`` set and does not affect the
    others. A failure of the whole request (CRM down, token revoked, rate
    limit) raises a :class:`~crmlookup.errors.CrmError`: nothing can be said
    then about which entries were created.
    """

    name: str
    # The kinds of record it creates; the outcome plans leave out the others
    # (a CRM whose own triggers make tasks from the call history takes calls only).
    writes: frozenset[WriteKind]
    # The most entries one ``create`` call may carry.
    max_batch: int
    # How long a record just created may take to be found by ``find_existing``
    # (a search index catching up); 0 for a CRM that finds it at once.
    search_lag_s: float

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        """Create ``entries`` (all of ``kind``)."""
        ...

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        """Which of ``entries`` (all of ``kind``) the CRM already holds: key -> record id."""
        ...

    async def users(self) -> Sequence[Owner]:
        """The CRM's active users, with the extensions the CRM knows for them."""
        ...

    async def check_access(self) -> None:
        """One request that proves the CRM accepts our credentials now (raises
        :class:`~crmlookup.errors.CrmAuthError` when it does not), for a queue
        that paused on refused credentials and has nothing to write."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...


@dataclass(frozen=True)
class CallRecording:
    """A call's recording, to go on the Call the writer created for it."""

    call: RecordRef  # the Call (module and CRM id)
    key: str  # the call's key (its unique id)
    file_name: str  # the name the CRM shows (the file's own name, no folder)
    link: str = ""  # where the recording is served, for a link; empty: none
    description: str = ""  # the Call's description as written, for a link added to it


class AttachmentTooLarge(CrmBadResponse):
    """The CRM refused an attachment for its size: nothing was stored."""


@runtime_checkable
class RecordingWriter(Protocol):
    """A writer that can put a recording on a Call after the Call exists (optional:
    a CRM that takes the recording's address with the call itself does not need it)."""

    async def attach_recording(self, recording: CallRecording, content: bytes) -> WriteResult:
        """Upload ``content`` as an attachment of the Call; the result's id is the attachment's.
        Raises :class:`AttachmentTooLarge` when the CRM refuses it for its size."""
        ...

    async def find_recording(self, recording: CallRecording) -> str:
        """The id of the attachment an earlier upload of this recording left on the Call, or ""."""
        ...

    async def link_recording(self, recording: CallRecording) -> WriteResult:
        """Write ``recording.link`` on the Call (writing it again changes nothing)."""
        ...
