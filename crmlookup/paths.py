"""Where crmroute keeps its files when the configuration names none."""

from __future__ import annotations

import os
from pathlib import Path


def state_directory() -> Path:
    """The directory for files crmroute writes (outbox, mirror, shared token).

    The service's state directory when systemd gives one (``StateDirectory=``
    sets ``$STATE_DIRECTORY``), else the user's state directory
    (``$XDG_STATE_HOME/crmroute``, by default ``~/.local/state/crmroute``).
    """
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "crmroute"
