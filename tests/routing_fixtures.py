"""Real parts for routing tests: a CRM backend that answers what it is given,
and a call history kept in memory (the LastAgent rule reads it)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Sequence

from crmlookup.errors import CrmUnavailable
from crmlookup.factory import open_backend
from crmlookup.phone import PhoneNumber
from crmlookup.records import LookupResult, Match
from dialplan.router import Router
from fastagi_server.app import App
from fastagi_server.config import Config


class StaticBackend:
    """A CRM that knows one set of matches for every number (the CrmBackend interface)."""

    name = "static"

    def __init__(self, matches: Sequence[Match] = (), *, delay: float = 0.0, fail: bool = False):
        self.matches = list(matches)
        self.delay = delay
        self.fail = fail

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise CrmUnavailable("503 from the CRM")
        rank = {module: i for i, module in enumerate(modules)}
        found = sorted((m for m in self.matches if m.module in rank), key=lambda m: rank[m.module])
        return LookupResult(matches=found, steps=[f"static backend: {len(found)} match(es)"])

    async def aclose(self) -> None:
        pass


class RecordedAnswers:
    """Our own record of answered calls, in memory: who answered which caller, and when."""

    def __init__(self, *, delay: float = 0.0, fail: bool = False):
        self.answers: list[tuple[str, str, float]] = []  # (caller E.164, extension, answered at)
        self.delay = delay
        self.fail = fail
        self.asked: list[tuple[str, float]] = []

    def answered(self, caller_e164: str, extension: str, seconds_ago: float) -> None:
        self.answers.append((caller_e164, extension, time.time() - seconds_ago))

    async def last_answered_extension(self, caller_e164: str, max_age_s: float) -> str | None:
        self.asked.append((caller_e164, max_age_s))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("history store unreadable")
        cutoff = time.time() - max_age_s
        recent = [(at, ext) for caller, ext, at in self.answers if caller == caller_e164 and at >= cutoff]
        return max(recent)[1] if recent else None


def build_app(config: Config, *, backend=None, history=None, now: datetime | None = None) -> App:
    """An App as ``App.from_config`` builds it, with the parts a test chooses."""
    backend = backend or open_backend(config.crm, config.directory)
    kwargs = {"history": history}
    if now is not None:
        kwargs["clock"] = lambda: now
    return App(config=config, backend=backend, router=Router(config.routing, backend, **kwargs))
