"""What the mirror needs of a CRM: every record, then what changed (a CRM's change feed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .records import MirrorRecord, MirrorUser, OpenRule


@dataclass(frozen=True)
class Page:
    """One answer of a listing."""

    records: list[MirrorRecord]
    # Where the listing goes on; None after its last page.
    next_token: str | None
    # The CRM's clock when it answered (the ``Date`` header), for watermarks.
    server_time: datetime | None
    # The latest change time among the records (0 when there are none).
    newest: float = 0.0


class ChangeFeed(Protocol):
    """A CRM, read for the mirror. Every method raises :class:`~crmlookup.errors.CrmError` when the CRM fails."""

    modules: tuple[str, ...]
    # The CRM's codes for a listing cursor it will no longer take; the listing
    # then goes on from the last change it read.
    cursor_refusals: frozenset[str]

    async def prepare(self, *, fresh: bool) -> OpenRule:
        """Read what judging records needs (fields, stages), again if ``fresh``."""
        ...

    async def list_page(self, module: str, *, since: datetime | None, token: str | None) -> Page:
        """One page of the records changed after ``since`` (every record without), oldest change first."""
        ...

    async def deleted(self, module: str, since: datetime | None) -> list[str]:
        """Ids of the records deleted after ``since``."""
        ...

    async def users(self, since: datetime | None) -> tuple[list[MirrorUser], datetime | None]:
        """The users changed after ``since`` (all without), and the CRM's clock."""
        ...

    async def existing(self, module: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` (at most 100) are still records."""
        ...

    def retry_in(self) -> float:
        """Seconds the CRM asked us to wait (a rate limit), 0 when none."""
        ...

    def requests_sent(self) -> dict[str, int]:
        """Requests sent so far by purpose (each costs API credits)."""
        ...
