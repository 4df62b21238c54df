"""What a CRM client did, counted where it happens and read by whoever reports it.

The server's ``/metrics`` reads these counts when it is scraped; nothing here
knows about Prometheus (the packages below the server stay free of it). A
request costs two dictionary updates and a short bucket search: no
formatting, no allocation beyond the first request of each kind.
"""

from __future__ import annotations

import bisect
from collections import Counter

# Upper bounds (seconds) of the latency buckets: from a quick local answer to
# the longest read timeout an admin is likely to set.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyCounts:
    """A histogram: counts per bucket of ``bounds`` (upper bounds, seconds; the last count is
    for what lies above them all), and the sum of what was observed."""

    __slots__ = ("bounds", "buckets", "total_s")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def copy(self) -> LatencyCounts:
        twin = LatencyCounts(self.bounds)
        twin.buckets, twin.total_s = list(self.buckets), self.total_s
        return twin


class RequestStats:
    """Requests one CRM client sent, by operation (what for: ``lookup``, ``mirror``,
    ``write``, ``token``...) and result (``ok``, ``timeout``, ``rate_limited``...),
    with their latency per operation; and the access tokens it minted or was refused."""

    def __init__(self, backend: str):
        self.backend = backend
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, LatencyCounts] = {}
        self.token_mints = 0
        self.token_refusals = 0

    def copy(self) -> RequestStats:
        twin = RequestStats(self.backend)
        twin.requests = Counter(self.requests)
        twin.latency = {operation: counts.copy() for operation, counts in self.latency.items()}
        twin.token_mints, twin.token_refusals = self.token_mints, self.token_refusals
        return twin

    def record(self, operation: str, result: str, seconds: float | None) -> None:
        """One request; ``seconds`` None when none left (the circuit breaker was open)."""
        self.requests[(operation, result)] += 1
        if seconds is not None:
            counts = self.latency.get(operation)
            if counts is None:
                counts = self.latency[operation] = LatencyCounts()
            counts.observe(seconds)


def result_of_error(exc: Exception) -> str:
    """The result label of a request that got no usable answer."""
    from .errors import CrmTimeout, CrmUnavailable

    if isinstance(exc, CrmTimeout):
        return "timeout"
    return "unreachable" if isinstance(exc, CrmUnavailable) else "bad_response"


def result_of_status(status: int) -> str:
    """The result label of an HTTP answer."""
    if status < 400:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "refused"
    return "server_error" if status >= 500 else "client_error"
