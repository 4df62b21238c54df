"""Something that is either well or in trouble, logged when it changes and never in between.

The CRM going down, credentials refused, an outbox that stops delivering, a
mirror going stale: an admin needs one line when it starts (with why) and one
when it ends (with how long it lasted), not one per call or per retry.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .durations import age_text


class Condition:
    """``failing(reason)`` logs ``"<trouble>: <reason>"`` the first time only;
    ``recovered()`` logs ``"<recovery> after <duration>"`` once, when it was failing."""

    def __init__(
        self,
        logger: logging.Logger,
        trouble: str,
        recovery: str,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self._trouble = trouble
        self._recovery = recovery
        self._level = level
        self._clock = clock
        self._since: float | None = None
        self.reason = ""

    @property
    def failing_for(self) -> float | None:
        """Seconds since the trouble began; None while all is well."""
        return None if self._since is None else self._clock() - self._since

    def failing(self, reason: str) -> bool:
        """The trouble goes on (or starts: then it is logged). True when it just started."""
        self.reason = reason
        if self._since is not None:
            return False
        self._since = self._clock()
        self._logger.log(self._level, "%s: %s", self._trouble, reason)
        return True

    def recovered(self) -> bool:
        """All is well (again: then it is logged, with how long it was not). True when it just recovered."""
        if self._since is None:
            return False
        lasted = self._clock() - self._since
        self._since = None
        self.reason = ""
        self._logger.warning("%s after %s", self._recovery, age_text(lasted))
        return True
