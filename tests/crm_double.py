"""An in-process CRM behind the :class:`~crmlookup.writer.CrmWriter` interface, for worker tests.

It behaves as a CRM's insert API does where it matters to the worker: it is
NOT idempotent (a create sent twice makes two records), it refuses single
records for their data while keeping the rest of the batch, and it can be
down, refuse our token, rate-limit us, or create the records and lose the
answer on the way back. Tests then count records per key to prove nothing
was lost and nothing written twice.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from crmlookup.errors import CrmAuthError, CrmRateLimited, CrmTimeout, CrmUnavailable
from crmlookup.records import Owner
from crmlookup.writer import ALL_KINDS, Entry, WriteKind, WriteResult


@dataclass
class Stored:
    kind: WriteKind
    record_id: str
    entry: Entry


@dataclass
class CrmDouble:
    users_list: Sequence[Owner] = ()
    max_batch: int = 100
    writes: frozenset = ALL_KINDS
    search_lag_s: float = 0.0
    name: str = "double"
    records: list[Stored] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (operation, module, size)
    down: bool = False
    revoked: bool = False
    rate_limited: int = 0  # the next N requests get a 429
    retry_after: float = 1.0
    lose_answers: int = 0  # the next N creates are made, but their answer is lost (timeout)
    reject: Callable[[Entry], str | None] = lambda entry: None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def _gate(self) -> None:
        if self.revoked:
            raise CrmAuthError("invalid oauth token")
        if self.down:
            raise CrmUnavailable("connection refused")
        if self.rate_limited:
            self.rate_limited -= 1
            raise CrmRateLimited("too many requests", retry_after=self.retry_after)

    async def create(self, kind: WriteKind, entries: Sequence[Entry]) -> list[WriteResult]:
        self.requests.append(("create", kind.value, len(entries)))
        self._gate()
        assert len(entries) <= self.max_batch, "batch larger than the API allows"
        results = []
        for entry in entries:
            problem = self.reject(entry)
            if problem:
                results.append(WriteResult(entry.key, error=problem))
                continue
            record_id = f"{kind.value[0]}{next(self._ids)}"
            self.records.append(Stored(kind, record_id, entry))
            results.append(WriteResult(entry.key, record_id=record_id))
        if self.lose_answers:
            self.lose_answers -= 1
            raise CrmTimeout("read timed out")
        return results

    async def find_existing(self, kind: WriteKind, entries: Sequence[Entry]) -> dict[str, str]:
        self.requests.append(("search", kind.value, len(entries)))
        self._gate()
        wanted = {entry.key for entry in entries}
        return {r.entry.key: r.record_id for r in self.records if r.kind is kind and r.entry.key in wanted}

    async def users(self) -> Sequence[Owner]:
        self._gate()
        return list(self.users_list)

    async def check_access(self) -> None:
        self.requests.append(("check", "", 0))
        self._gate()

    async def aclose(self) -> None:
        pass

    # -- for assertions -----------------------------------------------------------

    def of(self, kind: WriteKind) -> list[Stored]:
        return [r for r in self.records if r.kind is kind]

    def duplicates(self) -> dict[tuple[str, str], int]:
        counts = Counter((r.kind.value, r.entry.key) for r in self.records)
        return {key: n for key, n in counts.items() if n > 1}
