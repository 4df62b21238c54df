"""The configured application: settings, the CRM backend and the router.

This is the one piece of state the server holds; a SIGHUP swaps it for a
freshly built one while calls in flight finish on the old.
"""

from __future__ import annotations

from dataclasses import dataclass

from crmlookup.backend import CrmBackend
from crmlookup.factory import open_backend
from dialplan.history import CallHistory
from dialplan.router import Router, require_history

from .config import Config


@dataclass
class App:
    config: Config
    backend: CrmBackend
    router: Router

    @classmethod
    def from_config(cls, config: Config, history: CallHistory | None = None) -> "App":
        """Open the backend and build the router.

        ``history`` (recorded call outcomes) serves the LastAgent rule. Raises
        CrmError if the backend cannot open, ValueError if the routing policy
        needs something this app does not have.
        """
        require_history(config.routing, history)  # before the backend is opened
        backend = open_backend(config.crm, config.directory, config.zoho, config.cache, deadline_ms=config.routing.deadline_ms)
        return cls(config=config, backend=backend, router=Router(config.routing, backend, history=history))

    async def aclose(self) -> None:
        await self.backend.aclose()

