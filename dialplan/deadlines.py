"""The clock the routing deadline is kept by, and how a wait is cut off at it.

The FastAGI server keeps it with its event loop (:class:`LoopDeadlines`: the
loop's clock and ``asyncio.timeout_at``). The classic AGI's route path runs
without an event loop, so that a process per call does not pay for importing
asyncio: it brings a clock and a cut-off of its own (an interval timer, see
``fastagi_server.stdio_route``). Neither module imports asyncio here: the loop's
kind does so when it is used, and by then the loop runs.
"""

from __future__ import annotations

from typing import AsyncContextManager, Protocol


class Deadlines(Protocol):
    """``now()`` on the clock deadlines are given in; ``within(at)`` cuts the wait of its
    body off at ``at`` with :class:`TimeoutError`."""

    def now(self) -> float: ...

    def within(self, deadline_at: float) -> AsyncContextManager[object]: ...


class LoopDeadlines:
    """The running event loop's clock and ``asyncio.timeout_at`` (the server's)."""

    def now(self) -> float:
        import asyncio  # loaded already: an event loop runs this

        return asyncio.get_running_loop().time()

    def within(self, deadline_at: float) -> AsyncContextManager[object]:
        import asyncio

        return asyncio.timeout_at(deadline_at)


LOOP_DEADLINES = LoopDeadlines()
