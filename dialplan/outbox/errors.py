"""The outbox's one error, apart so that every piece of the outbox can raise it."""

from __future__ import annotations

from crmlookup.errors import CrmrouteError


class OutboxError(CrmrouteError):
    """The outbox file cannot be opened or written."""
