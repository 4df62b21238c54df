"""What a CRM's change feed gives the mirror: records and users, in no CRM's own shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..records import Owner


@dataclass(frozen=True, slots=True)
class MirrorRecord:
    """One CRM record as the mirror keeps it."""

    module: str
    id: str
    name: str
    owner: Owner | None
    # Every phone of the record as the CRM holds it (normalised when stored).
    phones: tuple[str, ...] = ()
    # When the CRM last changed it (seconds since the epoch): an older copy
    # never overwrites a newer one, whichever arrives last.
    modified_at: float = 0.0
    # What decides whether it is open: a lead's status, a deal's stage and pipeline.
    status: str = ""
    pipeline: str = ""
    converted: bool = False
    # The records through whose phones this one is reached: a deal's contact and account.
    parents: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorUser:
    """A CRM user: who owns records, and the extensions to ring for them."""

    id: str
    name: str
    email: str
    active: bool
    extensions: tuple[str, ...] = ()


class OpenRule(Protocol):
    """Whether a record still decides who owns the caller (a lead not junked, a deal not won)."""

    def is_open(self, module: str, status: str, pipeline: str, converted: bool) -> bool:
        ...

    def signature(self) -> str:
        """Changes when the rule does (settings, the pipeline's stages): the mirror then re-judges every record."""
        ...
