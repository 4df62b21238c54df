"""Group commit: outcomes recorded while a commit is under way share the next one.

Both stores (the SQLite outbox and the PostgreSQL one) commit on threads of
their own; a burst of hangups then costs one transaction per batch instead of
one per call, and each caller still returns only once its own outcome is
committed (or hears why it is not).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

from ..outcome import CallOutcome
from .errors import OutboxError

RecordMany = Callable[[Sequence[tuple[CallOutcome, float]]], Sequence[bool]]
Submit = Callable[[Callable[[], None]], "Future[None]"]


class GroupCommit:
    """Queues outcomes and commits them in batches with ``record_many`` on the
    store's thread, which ``submit`` runs a function on."""

    def __init__(self, record_many: RecordMany, submit: Submit):
        self._record_many = record_many
        self._submit = submit
        self._queued: list[tuple[CallOutcome, float, asyncio.Future[bool]]] = []
        self._lock = threading.Lock()
        self._committing = False

    async def record(self, outcome: CallOutcome, now: float) -> bool:
        """Commit ``outcome`` with whatever else is queued; True if new (False: recorded before)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queued.append((outcome, now, future))
            start = not self._committing
            self._committing = True
        if start:
            self._submit(self._commit_queued)
        return await future

    def _commit_queued(self) -> None:
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._committing = False
                    return
            try:
                results: list[bool | BaseException] = list(self._record_many([(o, now) for o, now, _ in batch]))
            except Exception as exc:  # every waiting caller hears of it; the next batch tries again
                error = exc if isinstance(exc, OutboxError) else OutboxError(f"cannot record outcome: {exc}")
                results = [error] * len(batch)
            for (_, _, future), result in zip(batch, results):
                try:
                    future.get_loop().call_soon_threadsafe(_settle, future, result)
                except RuntimeError:  # that caller's event loop is gone: nobody is waiting
                    pass


def _settle(future: asyncio.Future[bool], result: bool | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
