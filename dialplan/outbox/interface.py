"""What the delivery worker, the keeper, the call history and the admin's commands
ask of an outbox: one interface, two stores.

:class:`~.store.Outbox` is the embedded default, one SQLite file for one
router. :class:`~.postgres.PostgresOutbox` (``[store] url``) is one PostgreSQL
database that several routers share: one queue, one call history, one lead
per unknown caller. The worker is the same for both; only the SQL differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, ParamSpec, Protocol, Sequence, TypeVar

from ..outcome import CallOutcome
from .settings import StoreSettings
from .store import Finish, Outbox, OutboxError, OutboxItem, OutboxRow, OutboxState, WriteRow, WriteState

P = ParamSpec("P")
T = TypeVar("T")


class OutboxStore(Protocol):
    """The outbox's operations. Every method but :meth:`on_thread`, :meth:`record` and
    :meth:`aclose` is synchronous and blocking: the event loop calls them
    through :meth:`on_thread`, the CLI directly. Failures raise :class:`OutboxError`
    (or, for a local file, ``sqlite3.Error``/``OSError``)."""

    # Where it is, for logs and ``outbox status`` (a file, or a URL without its password).
    path: str
    # True for a store across the network: while it fails, outcomes go to the
    # memory spool at once rather than each waiting for a connection timeout.
    remote: bool

    async def on_thread(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    async def record(self, outcome: CallOutcome, now: float) -> bool: ...
    def record_many(self, outcomes: Sequence[tuple[CallOutcome, float]]) -> list[bool]: ...
    def claim(self, now: float, limit: int, lease_s: float) -> list[OutboxItem]: ...
    def writes_for(self, ids: Sequence[int]) -> dict[int, dict[str, WriteRow]]: ...
    def save_contexts(self, contexts: Sequence[tuple[int, dict[str, Any] | None]]) -> None: ...
    def lead_for_caller(self, caller_e164: str, exclude_id: int) -> tuple[WriteState, str, str] | None: ...
    def claim_leads(self, leads: Sequence[tuple[int, str]], now: float) -> set[int]: ...
    def release_orphans(self, now: float) -> int: ...
    def mark_writes(self, rows: Iterable[tuple[int, str, WriteState, str, str]], now: float) -> None: ...
    def unmark_sent(self, writes: Iterable[tuple[int, str]]) -> None: ...
    def finish(self, finishes: Sequence[Finish], now: float) -> None: ...
    def set_meta(self, key: str, value: str | None) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def counts(self) -> dict[str, int]: ...
    def oldest_recorded(self, states: Sequence[OutboxState]) -> float | None: ...
    def next_due(self, states: Sequence[OutboxState] = ...) -> float | None: ...
    def list_rows(self, state: OutboxState | None = None, limit: int = 50) -> list[OutboxRow]: ...
    def states_of(self, ids: Sequence[int]) -> dict[int, str]: ...
    def retry(self, now: float, ids: Sequence[int] | None = None) -> int: ...
    def replay(self, since: float, now: float) -> int: ...
    def purge_done(self, before: float) -> int: ...
    def last_answered_extension(self, caller_e164: str, since: float) -> str | None: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


def store_location(path: Path, store: StoreSettings | None) -> str:
    """Where the outbox is, as logs say it: the SQLite file, or the PostgreSQL URL without its password."""
    url = _url(store)
    if not url:
        return str(path)
    from .settings import redacted_url

    return redacted_url(url)


def open_store(path: Path, store: StoreSettings | None = None, *, create: bool = True) -> OutboxStore:
    """The outbox ``[store]`` names (PostgreSQL), else the SQLite file at ``path``; raises :class:`OutboxError`."""
    url = _url(store)
    if not url:
        return Outbox.open(path, create=create)
    assert store is not None
    from .postgres import PostgresOutbox

    return PostgresOutbox.open(store, url)


def _url(store: StoreSettings | None) -> str:
    if store is None:
        return ""
    try:
        return store.resolved_url()
    except ValueError as exc:
        raise OutboxError(f"store.{exc}") from None
