"""The call matrix: from a call's outcome to the CRM records it should leave.

=================================  ==========================================
the call                           what the CRM gets (each row switchable)
=================================  ==========================================
any call                           a Call (Inbound or Missed) on the record
missed, known caller               a task for the record's owner
missed, unknown caller             a lead for the senior manager + a call-back task
answered by someone not the owner  a task for the owner
answered, unknown caller           a lead owned by whoever answered
=================================  ==========================================

Pure functions: the worker decides when, this decides what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo, UTC
from typing import Callable
from zoneinfo import ZoneInfo

from crmlookup.phone import is_withheld
from crmlookup.writer import ALL_KINDS, CallEntry, Entry, LeadEntry, RecordRef, TaskEntry, WriteKind

from ..hours import BusinessHours
from ..outcome import CallOutcome
from ..recordings import RecordingSettings
from .context import CrmContext
from .settings import OutcomeSettings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SUBJECT_LENGTH = 200
_SINGULAR = {"Deals": "Deal", "Leads": "Lead", "Contacts": "Contact", "Accounts": "Account"}


class Step:
    """The records one outcome can need, in the order they are written."""

    LEAD = "lead"
    CALL = "call"
    TASK = "task"
    RECORDING = "recording"  # the call's recording, onto the Call once it exists
    # The call activity on the Zoho Desk ticket that routed the call (written by the Desk writer).
    TICKET = "ticket"


# The record module of a call entry meant for a Zoho Desk ticket.
TICKETS = "Tickets"


@dataclass(frozen=True)
class PlannedWrite:
    """One record to create; ``links_lead`` entries are linked to the lead created first."""

    step: str
    kind: WriteKind
    entry: Entry
    links_lead: bool = False


def zone(settings: OutcomeSettings) -> tzinfo:
    """The configured time zone, or the system's."""
    if settings.timezone:
        return ZoneInfo(settings.timezone)
    local = datetime.now(UTC).astimezone().tzinfo
    return local or UTC


def no_schedule(owner_id: str) -> BusinessHours | None:
    return None


def plan_writes(
    outcome: CallOutcome,
    context: CrmContext,
    settings: OutcomeSettings,
    tz: tzinfo,
    task_hours: Callable[[str], BusinessHours | None] = no_schedule,
    kinds: frozenset[WriteKind] = ALL_KINDS,
    recordings: RecordingSettings | None = None,
    ticket_calls: bool = False,
) -> list[PlannedWrite]:
    """The records ``outcome`` should leave in the CRM, in writing order.

    ``task_hours`` gives the schedule a task's owner works in: a task falling
    due outside it is due when it next opens (a call missed at 21:48 is called
    back in the morning, not at 01:48). ``kinds``: what the writer creates;
    the others are left out of the plan (and nothing links to a lead that is
    not written). ``recordings``: where a recording's file is and is served
    (its path and address go on the Call: the local directory keeps the one,
    retailCRM's call history the other). ``ticket_calls``: the writer also
    logs calls on Zoho Desk tickets; a call a ticket routed gets one there
    (step ``ticket``).
    """
    settings = _only(settings, kinds)
    writes: list[PlannedWrite] = []
    known = context.record is not None
    answered = outcome.answered
    lead_owner = ""
    if not known and outcome.caller_e164:
        if answered and settings.answered_unknown_lead:
            lead_owner = context.answerer_id or settings.senior_manager_id
            writes.append(_lead(outcome, lead_owner, "answered"))
        elif not answered and settings.missed_unknown_lead:
            lead_owner = settings.senior_manager_id
            writes.append(_lead(outcome, lead_owner, "missed"))
    has_lead = bool(writes)
    if settings.log_calls:
        owner = (context.answerer_id if answered else "") or context.owner_id or (lead_owner if has_lead else "")
        writes.append(PlannedWrite(Step.CALL, WriteKind.CALL, _call(outcome, context, owner, tz, recordings), links_lead=has_lead))
    if ticket_calls and context.ticket_id:
        writes.append(PlannedWrite(Step.TICKET, WriteKind.CALL, _ticket_call(outcome, context, tz, recordings)))
    due = datetime.fromtimestamp((context.planned_at or outcome.ended_at) + settings.task_due_hours * 3600, tz)
    if known and not answered and settings.missed_known_task:
        writes.append(_task(outcome, context, context.owner_id, due, "Call back", tz, task_hours(context.owner_id)))
    elif known and answered and settings.answered_by_other_task and context.owner_id and _answered_by_other(outcome, context):
        writes.append(_task(outcome, context, context.owner_id, due, "Follow up", tz, task_hours(context.owner_id)))
    elif has_lead and not answered:
        task = _task(outcome, context, lead_owner, due, "Call back", tz, task_hours(lead_owner))
        writes.append(PlannedWrite(task.step, task.kind, task.entry, links_lead=True))
    return writes


def _only(settings: OutcomeSettings, kinds: frozenset[WriteKind]) -> OutcomeSettings:
    """``settings`` with the rows switched off whose records the writer does not create."""
    if kinds == ALL_KINDS:
        return settings
    leads, tasks = WriteKind.LEAD in kinds, WriteKind.TASK in kinds
    return replace(
        settings,
        log_calls=settings.log_calls and WriteKind.CALL in kinds,
        answered_unknown_lead=settings.answered_unknown_lead and leads,
        missed_unknown_lead=settings.missed_unknown_lead and leads,
        missed_known_task=settings.missed_known_task and tasks,
        answered_by_other_task=settings.answered_by_other_task and tasks,
    )


def _answered_by_other(outcome: CallOutcome, context: CrmContext) -> bool:
    """True when we can tell someone other than the owner took the call."""
    if context.answerer_id:
        return context.answerer_id != context.owner_id
    if outcome.answered_extension and context.owner_extensions:
        return outcome.answered_extension not in context.owner_extensions
    return False  # nobody to compare: no task rather than a wrong one


def _number(outcome: CallOutcome) -> str:
    """The caller's number as best we know it; empty when withheld."""
    if outcome.caller_e164:
        return outcome.caller_e164
    return "" if is_withheld(outcome.caller) else _line(outcome.caller)[:40]


def _who(outcome: CallOutcome, context: CrmContext) -> str:
    name = _line(context.caller_name)
    number = _number(outcome)
    if name and number:
        return f"{name} ({number})"
    return name or number or "a withheld number"


def _line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def _subject(text: str) -> str:
    return _line(text)[:_SUBJECT_LENGTH]


def _local(epoch: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(epoch, tz)


def _duration(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _answered_by(outcome: CallOutcome, context: CrmContext) -> str:
    name = _line(context.answerer_name)
    extension = outcome.answered_extension
    if name and extension:
        return f"{name} (extension {extension})"
    return name or (f"extension {extension}" if extension else "someone (extension not known)")


def _description(outcome: CallOutcome, context: CrmContext, tz: tzinfo) -> str:
    lines = [f"Caller: {_number(outcome) or 'withheld'}"]
    if context.who is not None and context.record_name:
        # Named by the caller, the record (a deal) still says what the call was about.
        lines.append(f"{_SINGULAR.get(context.module, context.module)}: {_line(context.record_name)}")
    if outcome.did:
        lines.append(f"Dialled number: {_line(outcome.did)}")
    lines.append(f"Started: {_local(outcome.started_at, tz).isoformat(timespec='seconds')}")
    if outcome.answered:
        lines.append(f"Answered by: {_answered_by(outcome, context)}")
        lines.append(f"Talk time: {_duration(outcome.talk_seconds)}")
    else:
        lines.append(f"Not answered (Asterisk dial status: {outcome.dial_status or 'none'})")
    if context.inactive_owner:
        lines.append(f"Record owner {_line(context.inactive_owner)} is not an active CRM user")
    if context.owner_id:
        lines.append(f"Owner: {_line(context.owner_name) or context.owner_id}")
    if not outcome.complete:
        lines.append("The call's details could not be read from Asterisk; it is logged as missed.")
    lines.append(f"Asterisk call id: {outcome.call_id}" + (f" (linked id {outcome.linked_id})" if outcome.linked_id else ""))
    return "\n".join(lines)


def _call(outcome: CallOutcome, context: CrmContext, owner_id: str, tz: tzinfo, recordings: RecordingSettings | None) -> CallEntry:
    kind = "Inbound call" if outcome.answered else "Missed call"
    # Only an answered call has a conversation; a missed one's CRM_RECORDING is not passed on.
    recorded = outcome.recording if outcome.answered and recordings is not None else ""
    return CallEntry(
        key=outcome.call_id,
        answered=outcome.answered,
        start=_local(outcome.started_at, tz),
        duration_seconds=outcome.talk_seconds,
        subject=_subject(f"{kind} from {_who(outcome, context)}"),
        description=_description(outcome, context, tz),
        caller_number=_number(outcome),
        owner_id=owner_id,
        record=context.record,
        who=context.who,
        dial_status=outcome.dial_status,
        extension=outcome.answered_extension or outcome.route.extension,
        recording_url=outcome.recording_url or (recordings.link(recorded) if recordings is not None else ""),
        recording_path=str(recordings.path_of(recorded)) if recordings is not None and recorded else "",
    )


def _ticket_call(outcome: CallOutcome, context: CrmContext, tz: tzinfo, recordings: RecordingSettings | None) -> CallEntry:
    """The call on the Desk ticket: its agent owns it; the call id ends the subject, so a
    write whose answer was lost is found in the ticket's calls by it."""
    recorded = outcome.recording if outcome.answered and recordings is not None else ""
    kind = "Inbound call" if outcome.answered else "Missed call"
    subject = f"{_subject(f'{kind} from {_who(outcome, context)}')} [{_line(outcome.call_id)}]"
    return CallEntry(
        key=outcome.call_id,
        answered=outcome.answered,
        start=_local(outcome.started_at, tz),
        duration_seconds=outcome.talk_seconds,
        subject=subject,
        description=_description(outcome, context, tz),
        caller_number=_number(outcome),
        owner_id=context.ticket_agent_id,
        record=RecordRef(TICKETS, context.ticket_id),
        dial_status=outcome.dial_status,
        extension=outcome.answered_extension or outcome.route.extension,
        recording_url=outcome.recording_url or (recordings.link(recorded) if recordings is not None else ""),
    )


def _task(outcome: CallOutcome, context: CrmContext, owner_id: str, due: datetime, verb: str, tz: tzinfo, hours: BusinessHours | None) -> PlannedWrite:
    when = _local(outcome.ended_at, tz).strftime("%Y-%m-%d %H:%M")
    if outcome.answered:
        subject = f"{verb}: {_answered_by(outcome, context)} answered {_who(outcome, context)} at {when}"
    else:
        subject = f"{verb} {_who(outcome, context)}: missed call at {when}"
    opens = hours.next_open(due) if hours is not None else None
    entry = TaskEntry(
        key=outcome.call_id,
        subject=_subject(subject),
        description=_description(outcome, context, tz),
        due=opens.astimezone(tz) if opens is not None else due,
        owner_id=owner_id,
        record=context.record,
        who=context.who,
    )
    return PlannedWrite(Step.TASK, WriteKind.TASK, entry)


def lead_name(number: str) -> str:
    """The name a lead for an unknown caller gets (the CRM requires one)."""
    return f"Caller {number}"


def _lead(outcome: CallOutcome, owner_id: str, why: str) -> PlannedWrite:
    entry = LeadEntry(
        key=outcome.call_id,
        name=lead_name(outcome.caller_e164),
        phone=outcome.caller_e164,
        description=f"Created from a {why} phone call ({outcome.call_id}) from a number the CRM did not know.",
        owner_id=owner_id,
    )
    return PlannedWrite(Step.LEAD, WriteKind.LEAD, entry)
