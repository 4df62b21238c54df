"""One SQLite connection and the one thread that uses it.

The event loop never waits on the disk: blocking work on the connection is
handed to a dedicated thread (:meth:`ConnectionThread.call`), which is the
only thread touching the connection while the loop runs. Synchronous code
(the CLI) may use the connection directly.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ConnectionThread:
    """``connection`` plus a single worker thread named ``name``, started on first use."""

    def __init__(self, connection: sqlite3.Connection, name: str):
        self.connection = connection
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``function(*args, **kwargs)`` on the thread, without waiting."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        return self._executor.submit(function, *args, **kwargs)

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` on the thread, awaited."""
        import asyncio  # here, not at the top: the classic AGI reads the directory without an event loop

        return await asyncio.wrap_future(self.submit(function, *args, **kwargs))

    def close(self) -> None:
        """Finish queued work, stop the thread, close the connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.connection.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        if self._executor is not None:
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
            self._executor = None
        self.connection.close()
