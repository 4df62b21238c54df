"""The interface every CRM backend implements."""

from __future__ import annotations

from typing import Protocol, Sequence

from .phone import PhoneNumber
from .records import LookupResult


class CrmBackend(Protocol):
    """Finds who owns a caller. Implementations: the local directory, Zoho CRM, REST."""

    name: str

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        """Return the records matching ``number``, ordered by ``modules`` (best first).

        Closed leads and deals are left out. Raises a :class:`~crmlookup.errors.CrmError`
        when the CRM cannot answer.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...
