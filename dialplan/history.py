"""What the routing policy may ask of our own record of past calls."""

from __future__ import annotations

from typing import Protocol


class CallHistory(Protocol):
    """Recorded call outcomes, read by the "last agent" rule."""

    async def last_answered_extension(self, caller_e164: str, max_age_s: float) -> str | None:
        """The extension that most recently answered ``caller_e164`` within ``max_age_s``, if any."""
        ...
