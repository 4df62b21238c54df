"""The seam through which a server counts its calls (the metrics), kept free of any metrics library.

:func:`.handlers.run_session` tells an observer how each session ended; the
process AGI has none.
"""

from __future__ import annotations

from typing import Mapping, Protocol


class CallObserver(Protocol):
    def call_answered(self, script: str, result: Mapping[str, str], seconds: float) -> None:
        """A session ran its handler to the end; ``result`` is what its log line says."""
        ...

    def call_failed(self, script: str) -> None:
        """A session ended early (a limit, a protocol error, the peer left, a defect)."""
        ...
