"""What a server counts per call for its metrics: plain integers, a few increments per call.

No metrics library on this path (``prometheus_client`` takes a lock per
increment and walks its buckets: about 5 µs a call here, against well under
one for these). The counts are read, and copied, on the event loop when
``/metrics`` is scraped (:mod:`.health`), so they need no lock either.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

from crmlookup.stats import LatencyCounts

# Decision time: from a cache hit (about a millisecond) to past the default deadline (1.5 s).
DECISION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)
# Label sets kept per counter at most; past it, new ones count under "other".
MAX_LABEL_SETS = 1000
OTHER = "other"
_OTHER_CALL = (OTHER, OTHER, OTHER)


class CallCounts:
    """Sessions by script, policy and status; early ends by script; route decisions by source
    and their time. A :class:`~.call_observer.CallObserver`."""

    def __init__(self, scripts: Iterable[str]):
        # Only scripts the server serves become labels: a peer may ask for any name.
        self._scripts = frozenset(scripts)
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.failed: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.decision = LatencyCounts(DECISION_BUCKETS_S)

    def call_answered(self, script: str, result: Mapping[str, str], seconds: float) -> None:
        if script not in self._scripts:
            self.calls[_OTHER_CALL] += 1
            return
        key = (script, result.get("policy", ""), result.get("status") or result.get("outcome", ""))
        if key not in self.calls and len(self.calls) >= MAX_LABEL_SETS:
            key = _OTHER_CALL
        self.calls[key] += 1
        if script == "route":
            self.decision.observe(seconds)
            source = result.get("source") or "none"
            self.sources[source if source in self.sources or len(self.sources) < 32 else OTHER] += 1

    def call_failed(self, script: str) -> None:
        self.failed[script if script in self._scripts else OTHER] += 1
