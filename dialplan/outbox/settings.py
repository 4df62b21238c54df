"""The ``[outbox]``, ``[outcomes]`` and ``[store]`` sections of ``crmroute.toml``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit
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


STORE_URL_ENV = "CRMROUTE_STORE_URL"
STORE_PASSWORD_ENV = "CRMROUTE_STORE_PASSWORD"
_STORE_SCHEMES = ("postgresql://", "postgres://")


def _secret_field() -> str:
    # A URL may carry a password: it stays out of reprs (a Config printed in a log shows none).
    value: str = field(default="", repr=False)
    return value


@dataclass(frozen=True)
class StoreSettings:
    """The ``[store]`` section: where the outbox, the call history and the
    lead-per-caller guard live. Empty ``url``: the SQLite file ``outbox.path``
    (one router); a PostgreSQL URL: one store that several routers share."""

    # postgresql://user@host:5432/dbname?sslmode=require; from this key, the file
    # url_file names, or $CRMROUTE_STORE_URL. Empty everywhere: SQLite.
    url: str = _secret_field()
    url_file: str = ""
    # The database password, when the URL carries none: this key, password_file, or
    # $CRMROUTE_STORE_PASSWORD (a ~/.pgpass file or peer authentication work too).
    password: str = _secret_field()
    password_file: str = ""
    # Connections each router keeps open, at least and at most.
    pool_min: int = bounded(1, 1, 100)
    pool_max: int = bounded(4, 1, 100)
    # Connecting, and waiting for a free connection, gives up after this.
    connect_timeout_s: float = bounded(5.0, 0.1, 300)
    # A statement running longer is cancelled by the server.
    statement_timeout_ms: int = bounded(10_000, 10, 3_600_000)
    # The call path (LastAgent) waits this long at most for a connection.
    read_wait_ms: int = bounded(300, 1, 60_000)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.pool_max < self.pool_min:
            raise ValueError("pool_max must not be less than pool_min")
        if self.url and self.url_file:
            raise ValueError("url and url_file are both set: keep one")
        if self.password and self.password_file:
            raise ValueError("password and password_file are both set: keep one")
        if self.url:
            check_store_url("url", self.url)

    def resolved_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The PostgreSQL URL (``""``: SQLite); ValueError naming the key when its file cannot be read."""
        environ = os.environ if environ is None else environ
        if self.url:
            return self.url
        if self.url_file:
            return check_store_url("url_file", _read_secret_file("url_file", self.url_file))
        value = environ.get(STORE_URL_ENV, "").strip()
        return check_store_url(f"${STORE_URL_ENV}", value) if value else ""

    def resolved_password(self, environ: Mapping[str, str] | None = None) -> str:
        """The password to send (``""``: the URL's, a ~/.pgpass, or none)."""
        environ = os.environ if environ is None else environ
        if self.password:
            return self.password
        if self.password_file:
            return _read_secret_file("password_file", self.password_file)
        return environ.get(STORE_PASSWORD_ENV, "").strip()


def check_store_url(key: str, url: str) -> str:
    """``url`` if it is a PostgreSQL URL; ValueError naming ``key`` (never quoting the URL: it may hold a password)."""
    if not url.startswith(_STORE_SCHEMES):
        raise ValueError(f"{key} must be a PostgreSQL URL (postgresql://user@host:5432/dbname)")
    return url


def redacted_url(url: str) -> str:
    """``url`` without its password, for logs and ``outbox status``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _read_secret_file(key: str, path: str) -> str:
    try:
        with open(Path(path).expanduser(), "rb") as handle:
            data = handle.read(16_385)
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", "replace").strip()
    if not text or len(data) > 16_384:
        raise ValueError(f"{key}: {path} is empty or too large to be a credential")
    return text
