"""A circuit breaker: stop asking a CRM that is struggling, for a while.

It opens in two ways. A rate-limit answer (HTTP 429) opens it at once, for a
back-off that doubles with each rate-limit answer in a row. A run of failures
(server errors, timeouts, refused connections) opens it for a fixed time.
While it is open, requests fail at once without touching the network, so a
burst of calls against a struggling CRM costs nothing and the cache serves
what it has. After the open time, requests flow again; one more failure
reopens it straight away (the failure count is only reset by a success).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .errors import CrmRateLimited, CrmUnavailable


# How the reason of a breaker opened by a rate-limit answer begins.
RATE_LIMITED = "rate limited"


class CircuitBreaker:
    """Counts failures and rate limits; says how long to leave the service alone."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        open_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._threshold = failure_threshold
        self._open_s = open_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._failures = 0
        self._rate_limits = 0
        self._open_until = 0.0
        self.reason = ""

    @classmethod
    def from_settings(cls, settings: Any) -> CircuitBreaker:
        """The breaker a CRM's settings describe (``breaker_failures``, ``breaker_open_s``,
        ``backoff_initial_ms``, ``backoff_max_ms``)."""
        return cls(
            failure_threshold=settings.breaker_failures,
            open_s=settings.breaker_open_s,
            backoff_initial_s=settings.backoff_initial_ms / 1000,
            backoff_max_s=settings.backoff_max_ms / 1000,
        )

    def check(self, service: str, trace: list[str] | None) -> None:
        """Raise while open, without touching the network: :class:`CrmRateLimited` after a
        rate limit (with the seconds left), else :class:`CrmUnavailable`; noted in ``trace``."""
        wait = self.retry_in()
        if wait <= 0:
            return
        message = f"not calling {service} for {wait:.1f} s more: {self.reason}"
        if trace is not None:
            trace.append(f"circuit open: {message}")
        if self.reason.startswith(RATE_LIMITED):
            raise CrmRateLimited(message, retry_after=wait)
        raise CrmUnavailable(message)

    def retry_in(self) -> float:
        """Seconds until requests may be sent again; 0 when they may go now."""
        return max(0.0, self._open_until - self._clock())

    @property
    def is_open(self) -> bool:
        return self.retry_in() > 0

    def record_success(self) -> None:
        self._failures = 0
        self._rate_limits = 0
        self.reason = ""

    def record_failure(self, reason: str) -> None:
        """A server error, timeout or refused connection."""
        self._failures += 1
        if self._failures >= self._threshold:
            self._open(self._open_s, f"{self._failures} failures in a row, last: {reason}")

    def record_rate_limited(self, retry_after_s: float | None = None, status: int = 429) -> float:
        """A rate-limit answer (``status``, a 429 for most CRMs). Returns the back-off chosen (seconds)."""
        backoff = min(self._backoff_max_s, self._backoff_initial_s * (2.0 ** self._rate_limits))
        self._rate_limits += 1
        if retry_after_s is not None:
            backoff = min(self._backoff_max_s, max(backoff, retry_after_s))
        self._open(backoff, f"{RATE_LIMITED} ({status})")
        return backoff

    def _open(self, seconds: float, reason: str) -> None:
        self._open_until = max(self._open_until, self._clock() + seconds)
        self.reason = reason
