"""An access token shared through a file, for processes that live for one call.

Classic AGI (``crmroute-agi``) starts a process per call, and so does each
``crmroute lookup`` or ``outbox flush``. Without a shared token each would mint
its own, and Zoho mints at most 10 per refresh token in 10 minutes: the
eleventh run would be refused, and the server could not mint either. So the
first process stores the token (``zoho.token_cache_file``, by default in
crmroute's state directory; file mode 0600, written atomically) and the next
ones use it until it expires; an exclusive lock on ``FILE.lock`` makes sure
two processes never mint at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import AsyncIterator

from ..files import ensure_private_directory, open_private_file

# The token's file in crmroute's state directory when ``zoho.token_cache_file`` is
# empty, so every ``crmroute`` command and ``crmroute-agi`` run by one user (and
# ``serve`` under systemd, in its ``StateDirectory``) use one token.
TOKEN_FILE = "zoho-token.json"

logger = logging.getLogger("crmroute.zoho")


def credentials_fingerprint(accounts_server: str, client_id: str, refresh_token: str) -> str:
    """Which credentials a shared token was minted with, as a one-way digest.

    The file is shared by every process of a user: one configured for another
    org (a sandbox, a new refresh token) must mint its own, not call that
    other org with a token found there.
    """
    return hashlib.sha256("\n".join((accounts_server, client_id, refresh_token)).encode("utf-8")).hexdigest()[:32]


class TokenFile:
    """Reads and writes ``{"access_token", "api_domain", "expires_at", "for"}`` (expires_at: Unix time;
    ``for``: the :func:`credentials_fingerprint` of the credentials it was minted with)."""

    def __init__(self, path: str | Path, credentials: str = ""):
        self.path = Path(path)
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the exclusive lock (other processes wait) while the token is read or minted.

        A place where the lock cannot be made (no such directory and none can
        be created, no permission) costs the sharing, never the lookup: the
        token is then minted without it, and the failure logged.
        """
        try:
            ensure_private_directory(self.path.parent)
            fd = open_private_file(f"{self.path}.lock", os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            logger.warning("cannot lock zoho.token_cache_file %s (%s): the token is not shared with other processes", self.path, exc.strerror or exc)
            yield
            return
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def load(self) -> tuple[str, str, float] | None:
        """``(token, api_domain, seconds left)`` if the file holds a token still valid; else None."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        if data.get("for", "") != self._credentials:
            return None  # minted for other credentials (another org, a new refresh token)
        value, domain, expires_at = data.get("access_token"), data.get("api_domain"), data.get("expires_at")
        if not isinstance(value, str) or not value or not isinstance(domain, str) or not isinstance(expires_at, (int, float)):
            return None
        left = expires_at - time.time()
        return (value, domain, left) if left > 0 else None

    def save(self, value: str, api_domain: str, seconds_left: float) -> None:
        """Write the token for the next process; a failure is logged, never fatal."""
        data = json.dumps({"access_token": value, "api_domain": api_domain, "expires_at": time.time() + seconds_left, "for": self._credentials})
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = open_private_file(temporary)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
            os.replace(temporary, self.path)
        except OSError as exc:
            logger.warning("cannot write zoho.token_cache_file %s: %s", self.path, exc.strerror or exc)
