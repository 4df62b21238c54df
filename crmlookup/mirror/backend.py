"""A backend that answers from the mirror of the CRM and asks the CRM only for what the mirror cannot.

* Once the first load is done, a number the mirror knows (on an open record
  or a closed one) is answered from it: one index seek on a local file, no
  request, whatever state the CRM is in. Past ``stale_after_s`` without a
  good refresh, the route reason says how old the mirror is.
* A number the mirror does not know may belong to a record created since the
  last refresh. ``crmroute serve`` answers the call from the mirror at once
  and brings the next refresh forward (to ``miss_refresh_s`` after the last
  one at the latest): however many unknown callers ring, that costs one
  refresh. With ``miss_wait_ms`` the call waits that long for the CRM asked
  live instead (one round trip, every search at once), and what the CRM
  finds goes into the mirror. Processes that only read the mirror
  (``crmroute lookup``, a process AGI) ask the CRM live, within the caller's
  deadline.
* Until the first load is done, or when the file cannot be read, every
  lookup asks the CRM, as without a mirror.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Sequence

from ..backend import CrmBackend
from ..durations import age_text
from ..errors import CrmError, DirectoryError
from ..local_directory.directory import LocalDirectory
from ..phone import PhoneNumber
from ..records import LookupResult
from . import store as keys
from .feed import ChangeFeed
from .records import MirrorRecord
from .refresher import MirrorRefresher, MirrorStatus
from .settings import MirrorSettings
from .store import MirrorFileError, MirrorStore, open_readonly

logger = logging.getLogger("crmroute.mirror")


class MirroredBackend:
    """Wraps the CRM's (cached) live backend; is a :class:`~crmlookup.backend.CrmBackend` itself."""

    def __init__(
        self,
        live: CrmBackend,
        settings: MirrorSettings,
        index: LocalDirectory | None,
        status: MirrorStatus,
        *,
        refresher: MirrorRefresher | None = None,
        unavailable: str = "",
    ):
        self.live = live
        self.name = live.name
        self.settings = settings
        self.status = status
        self._index = index
        self._refresher = refresher
        self._unavailable = unavailable
        self._background: set[asyncio.Future[LookupResult]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warned_unreadable = False
        # Calls that waited for the CRM because the mirror could not answer them (for the benchmarks and status).
        self.calls_waited_for_crm = 0

    @classmethod
    def open(cls, settings: MirrorSettings, live: CrmBackend, region: str, *, feed: ChangeFeed | None = None) -> MirroredBackend:
        """The mirror at ``settings.resolved_path``; with a ``feed`` this process keeps it (``crmroute serve``).

        Without one the file is only read, and a missing or unreadable file
        means every lookup asks the CRM (the reason is in ``--explain``).
        """
        path = settings.resolved_path
        status = MirrorStatus()
        refresher = None
        try:
            if feed is not None:
                refresher = MirrorRefresher(MirrorStore.open(path), feed, settings, region, status)
            index = LocalDirectory(open_readonly(path), str(path), name=live.name, source="mirror")
        except MirrorFileError as exc:
            if refresher is not None:
                refresher.close()
            if feed is not None:
                # Routing never depends on the mirror: the calls are looked up live meanwhile.
                logger.error("mirror: %s; calls are looked up live (fix the file or mirror.path, then reload)", exc)
            return cls(live, settings, None, status, unavailable=str(exc))
        state = dict(index.connection.execute("SELECT key, value FROM mirror_state").fetchall())
        # A mirror normalised for another region answers wrongly until the refresher has redone it.
        status.ready = state.get(keys.LOAD_COMPLETE) == "1" and state.get(keys.REGION) == region
        refreshed = state.get(keys.LAST_REFRESH_AT)
        status.refreshed_at = float(refreshed) if refreshed else None
        unavailable = "" if status.ready else ("its first load is not done" if state.get(keys.LOAD_COMPLETE) != "1" else f"it was built for another region than {region}")
        return cls(live, settings, index, status, refresher=refresher, unavailable=unavailable)

    @property
    def refresher(self) -> MirrorRefresher | None:
        return self._refresher

    def remember(self, records: list[MirrorRecord]) -> None:
        """What a live lookup found: into the mirror (when this process keeps it)."""
        if self._refresher is not None:
            self._refresher.remember(records)

    # -- lookups ------------------------------------------------------------

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        if self._index is not None and self.status.ready:
            try:
                result = await self._index.lookup(number, modules)
            except DirectoryError as exc:
                self._unreadable(exc)
            else:
                if result.known:
                    return self._from_mirror(result)
                return await self._not_in_mirror(number, modules, result)
        self.calls_waited_for_crm += 1
        result = await self.live.lookup(number, modules)
        result.steps.insert(0, f"mirror: not used ({self.why_not_ready()}); asking {self.name}")
        result.source = result.source or "live"
        return result

    def _from_mirror(self, result: LookupResult) -> LookupResult:
        age = self.status.age_s()
        result.age_s = age
        if age is None:
            result.steps.insert(0, "mirror: answered from the mirror")
            return result
        result.steps.insert(0, f"mirror: answered from the mirror, last refreshed {age_text(age)} ago")
        if age >= self.settings.stale_after_s:
            result.note = f"mirror {age_text(age)} old"
            if self.status.last_error:
                result.steps.insert(1, f"mirror: refreshing fails: {self.status.last_error}")
        return result

    async def _not_in_mirror(self, number: PhoneNumber, modules: Sequence[str], mirrored: LookupResult) -> LookupResult:
        unknown = f"mirror: {number.e164} is not in the mirror"
        if self._refresher is not None and self.settings.miss_wait_ms == 0:
            # Answered now; a record created since the last refresh arrives with the next
            # one, brought forward: a cost that does not grow with the callers asking.
            when = self._refresher.refresh_soon()
            mirrored.steps.insert(0, f"{unknown}; {when}")
            return mirrored
        self.calls_waited_for_crm += 1
        ask = asyncio.ensure_future(self.live.lookup(number, modules))
        wait_s = self.settings.miss_wait_ms / 1000 if self._refresher is not None else None
        try:
            async with asyncio.timeout(wait_s):
                result = await asyncio.shield(ask)
        except TimeoutError:
            self._keep(ask)
            mirrored.steps.insert(0, f"{unknown}; {self.name} did not answer in {self.settings.miss_wait_ms} ms (asked on, in the background)")
            return mirrored
        except CrmError as exc:
            mirrored.steps.insert(0, f"{unknown}; asking {self.name} failed ({exc}): answered from the mirror")
            return mirrored
        result.steps.insert(0, f"{unknown}; asked {self.name}")
        result.source = result.source or "live"
        return result

    def _keep(self, ask: asyncio.Future[LookupResult]) -> None:
        """Let a lookup nobody waits for finish, and read its outcome (a failure is only logged)."""
        self._background.add(ask)
        ask.add_done_callback(self._settled)

    def _settled(self, ask: asyncio.Future[LookupResult]) -> None:
        self._background.discard(ask)
        if not ask.cancelled() and ask.exception() is not None:
            logger.debug("mirror: background lookup failed: %s", ask.exception())

    def _unreadable(self, exc: Exception) -> None:
        if not self._warned_unreadable:
            self._warned_unreadable = True
            logger.error("mirror: cannot read %s (%s); calls are looked up live", self._index.description if self._index else "", exc)
        self._unavailable = f"the file cannot be read: {exc}"

    def why_not_ready(self) -> str:
        """Why calls are not answered from the mirror now (for --explain and the readiness check)."""
        if self.status.ready:
            return self._unavailable or "unavailable"
        return self._unavailable or "its first load is not done"

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Keep the mirror fresh in the background (``crmroute serve``), until :meth:`aclose`."""
        if self._refresher is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_fresh(), name="mirror refresher")

    async def _keep_fresh(self) -> None:
        assert self._refresher is not None
        try:
            await self._refresher.open()
        except (MirrorFileError, sqlite3.Error, OSError) as exc:
            logger.error("mirror: cannot prepare %s: %s; calls are looked up live", self.settings.resolved_path, exc)
            return
        if self.status.ready and self._unavailable:
            self._unavailable = ""
        await self._refresher.run(self._stop)

    def stop_refreshing(self) -> None:
        """Stop after the pass in flight (a reload hands the file to the next configuration)."""
        self._stop.set()

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for ask in list(self._background):
            ask.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._refresher is not None:
            await self._refresher.aclose()
        if self._index is not None:
            await self._index.aclose()
        await self.live.aclose()
