"""The call history the "last agent" rule reads, over the outbox's outcomes.

The outbox keeps every recorded call (delivered ones for ``outbox.keep_days``)
whatever the CRM, so this works with every backend.
"""

from __future__ import annotations

import time
from typing import Callable

from .interface import OutboxStore
from .keeper import OutboxKeeper


class OutboxCallHistory:
    """:class:`dialplan.history.CallHistory` over an :class:`Outbox`, or the one an
    :class:`OutboxKeeper` has open (OutboxError while it has none: the router
    then routes without the LastAgent rule)."""

    def __init__(self, outbox: OutboxStore | OutboxKeeper, clock: Callable[[], float] = time.time):
        self._current: Callable[[], OutboxStore] = outbox.current if isinstance(outbox, OutboxKeeper) else lambda: outbox
        self._clock = clock

    async def last_answered_extension(self, caller_e164: str, max_age_s: float) -> str | None:
        """The extension that most recently answered ``caller_e164`` within ``max_age_s``, if any."""
        if not caller_e164:
            return None
        since = self._clock() - max_age_s
        outbox = self._current()
        return await outbox.on_thread(outbox.last_answered_extension, caller_e164, since)
