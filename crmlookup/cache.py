"""A cache in front of any backend: fast answers, one lookup per number, stale beats nothing.

* **TTL**: an entry with matches is fresh for ``ttl_s``, one without (the
  caller is not in the CRM) for ``negative_ttl_s``; at most ``max_entries``,
  least recently used dropped first.
* **Single-flight**: however many calls for one number arrive together, the
  backend is asked once; the others wait for that lookup.
* **Stale on error**: an expired entry is kept ``stale_ttl_s`` longer. A call
  that finds one asks the backend, and serves the expired entry if the backend
  fails or is slower than ``stale_wait`` (the refresh goes on in the background).
* **The deadline fills the cache**: a caller's deadline cancels only its own
  wait; the lookup goes on, bounded by ``refresh_timeout_ms``, and stores
  what it finds for the next call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import cachetools

from .backend import CrmBackend
from .errors import CrmError, CrmTimeout
from .phone import PhoneNumber
from .records import LookupResult, Match
from .settings import CacheSettings

logger = logging.getLogger("crmroute.cache")

Key = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class _Entry:
    matches: tuple[Match, ...]
    stored_at: float
    fresh_until: float
    stale_until: float
    passed_over: tuple[str, ...] = ()


class CachedBackend:
    """Wraps a :class:`~crmlookup.backend.CrmBackend`; is one itself."""

    def __init__(self, inner: CrmBackend, settings: CacheSettings, *, stale_wait_s: float, clock: Callable[[], float] = time.monotonic):
        self.inner = inner
        self.name = inner.name
        self._settings = settings
        self._stale_wait_s = stale_wait_s
        self._clock = clock
        self._entries: cachetools.TLRUCache[Key, _Entry] = cachetools.TLRUCache(
            maxsize=settings.max_entries, ttu=lambda _key, entry, _now: entry.stale_until, timer=clock
        )
        self._flights: dict[Key, asyncio.Task[LookupResult]] = {}
        self.lookups_started = 0

    def fresh(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult | None:
        """The answer of a fresh entry, at once; None when the backend must be asked.

        :meth:`lookup` answers the same from a fresh entry. This form never
        waits, so a caller with a deadline need not arm a timer for it.
        """
        entry = self._entries.get((number.e164, tuple(modules)))
        if entry is None:
            return None
        now = self._clock()
        if now < entry.fresh_until:
            return self._served(entry, f"cache: fresh entry for {number.e164} (stored {now - entry.stored_at:.0f} s ago)", "cache")
        return None

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        answer = self.fresh(number, modules)
        if answer is not None:
            return answer
        key: Key = (number.e164, tuple(modules))
        entry = self._entries.get(key)
        now = self._clock()
        flight, joined = self._flight(key, number, modules)
        how = f"cache: joined the {self.name} lookup already running for {number.e164}" if joined else f"cache: {'expired' if entry else 'no'} entry for {number.e164}; asking {self.name}"
        if entry is None:
            # shield: the caller's deadline cancels this wait, not the lookup.
            result = await asyncio.shield(flight)
            return _joined(result, how)
        try:
            async with asyncio.timeout(self._stale_wait_s):
                result = await asyncio.shield(flight)
        except TimeoutError:
            return self._served(entry, f"{how}; no answer in {self._stale_wait_s * 1000:.0f} ms: serving the entry that expired {now - entry.fresh_until:.0f} s ago (refresh continues)", "stale")
        except CrmError as exc:
            return self._served(entry, f"{how}; {self.name} failed ({exc}): serving the entry that expired {now - entry.fresh_until:.0f} s ago", "stale")
        return _joined(result, how)

    def _served(self, entry: _Entry, step: str, source: str) -> LookupResult:
        return LookupResult(matches=list(entry.matches), steps=[step], from_cache=True, source=source, passed_over=list(entry.passed_over))

    def _flight(self, key: Key, number: PhoneNumber, modules: Sequence[str]) -> tuple[asyncio.Task[LookupResult], bool]:
        """The lookup running for ``key``, started if there is none; and whether it was already running."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight, True
        flight = asyncio.get_running_loop().create_task(self._fetch(key, number, modules), name=f"lookup {number.e164}")
        self._flights[key] = flight
        flight.add_done_callback(lambda done: self._landed(key, done))
        self.lookups_started += 1
        return flight, False

    async def _fetch(self, key: Key, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        limit_ms = self._settings.refresh_timeout_ms
        try:
            async with asyncio.timeout(limit_ms / 1000):
                result = await self.inner.lookup(number, modules)
        except TimeoutError:
            raise CrmTimeout(f"{self.name} lookup still running after {limit_ms} ms; abandoned") from None
        ttl = self._settings.ttl_s if result.matches else self._settings.negative_ttl_s
        now = self._clock()
        self._entries[key] = _Entry(tuple(result.matches), now, now + ttl, now + ttl + self._settings.stale_ttl_s, tuple(result.passed_over))
        return result

    def _landed(self, key: Key, flight: asyncio.Task[LookupResult]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled() and flight.exception() is not None:
            # Read here so a lookup nobody waited for any more is not reported as "never retrieved".
            logger.debug("lookup %s failed: %s", key[0], flight.exception())

    def adopt(self, previous: CachedBackend) -> None:
        """Take the entries of the cache this one replaces (a reload), so the last known answers survive it.

        Each entry keeps the times it was stored with; the CRM must be the same one.
        """
        now = self._clock()
        for key, entry in list(previous._entries.items()):
            if entry.stale_until > now:
                self._entries[key] = entry

    async def aclose(self) -> None:
        """Stop lookups in flight, then close the backend."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        if flights:
            await asyncio.gather(*flights, return_exceptions=True)
        await self.inner.aclose()


def _joined(result: LookupResult, how: str) -> LookupResult:
    """A lookup's answer for one of the calls that waited for it (the steps say how it was reached)."""
    return LookupResult(
        matches=list(result.matches), steps=[how, *result.steps], passed_over=list(result.passed_over),
        known=result.known, source=result.source, note=result.note, age_s=result.age_s,
    )
