"""The ``[outbox]`` and ``[outcomes]`` sections of ``crmroute.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmlookup.settings import bounded, check_bounds
from crmlookup.state import state_directory

OUTBOX_FILE = "outbox.sqlite"


def default_outbox_path() -> Path:
    """Where the outbox lives when ``outbox.path`` is empty: in crmroute's state directory
    (``$STATE_DIRECTORY`` under systemd, else ``~/.local/state/crmroute``)."""
    return state_directory() / OUTBOX_FILE


@dataclass(frozen=True)
class OutboxSettings:
    """The ``[outbox]`` section: where outcomes wait for the CRM, and how they are retried."""

    # The SQLite file; empty: see default_outbox_path().
    path: str = ""
    # Outcomes taken per round; each kind of record is sent in requests of at most this many.
    batch_size: int = bounded(100, 1, 100)
    # How often an idle worker looks for due outcomes (a new outcome wakes it at once).
    flush_interval_s: float = bounded(5.0, 0.01, 3600)
    # A record the CRM refuses for its data is retried; after this many refusals it is dead.
    max_attempts: int = bounded(5, 1, 1000)
    # Back-off after a failed attempt: doubles from the first value up to the second, with jitter.
    backoff_initial_s: float = bounded(5.0, 0.01, 86_400)
    backoff_max_s: float = bounded(900.0, 0.01, 86_400)
    # After the CRM refused our credentials: the queue pauses, and tries again this often
    # (a config reload with SIGHUP tries at once).
    auth_retry_s: float = bounded(300.0, 0.01, 86_400)
    # A claimed outcome not finished within this is taken up again (the worker died).
    lease_s: float = bounded(120.0, 1, 86_400)
    # Delivered outcomes are kept this many days (call history); 0 keeps them forever.
    keep_days: int = bounded(90, 0, 36_500)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must not be less than backoff_initial_s")

    @property
    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else default_outbox_path()


@dataclass(frozen=True)
class OutcomeSettings:
    """The ``[outcomes]`` section: what the CRM learns from each call (the call matrix)."""

    # Every call becomes a Call activity (Inbound or Missed) on the caller's record.
    log_calls: bool = True
    # Missed call from a known caller: a task for the record's owner.
    missed_known_task: bool = True
    # Missed call from an unknown caller: a lead owned by the senior manager, and a call-back task.
    missed_unknown_lead: bool = True
    # Answered by someone other than the owner: a task for the owner.
    answered_by_other_task: bool = True
    # Unknown caller answered: a lead owned by whoever answered.
    answered_unknown_lead: bool = True
    # Tasks are due this many hours after the call.
    task_due_hours: float = bounded(4.0, 0, 24 * 365)
    # CRM user id owning leads from missed unknown callers; empty: the CRM's default owner.
    senior_manager_id: str = ""
    # IANA time zone for call times written to the CRM (Europe/Madrid); empty: the system's.
    timezone: str = ""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"timezone {self.timezone!r} is not a known IANA time zone (e.g. Europe/Madrid)") from None
