"""What a CRM client did, counted where it happens and read by whoever reports it.

The server's ``/metrics`` reads these counts when it is scraped; nothing here
knows about Prometheus (the packages below the server stay free of it). A
request costs two dictionary updates and a short bucket search: no
formatting, no allocation beyond the first request of each kind.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds (seconds) of the latency buckets: from a quick local answer to
# the longest read timeout an admin is likely to set.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyCounts:
    """A histogram: counts per bucket of :data:`LATENCY_BUCKETS_S` (the last one: above them all), and the sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return sum(self.buckets)


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

    def record(self, operation: str, result: str, seconds: float | None) -> None:
        """One request; ``seconds`` None when none left (the circuit breaker was open)."""
        self.requests[(operation, result)] += 1
        if seconds is not None:
            counts = self.latency.get(operation)
            if counts is None:
                counts = self.latency[operation] = LatencyCounts()
            counts.observe(seconds)


def result_of_status(status: int) -> str:
    """The result label of an HTTP answer."""
    if status < 400:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "refused"
    return "server_error" if status >= 500 else "client_error"
