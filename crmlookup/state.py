"""Where crmroute keeps its own files when the configuration names none.

The outbox, the demo directory and the shared Zoho access token all live
here, so a command finds what the service wrote when both run as the same
user (and a systemd service finds its own through ``StateDirectory=``).
"""

from __future__ import annotations

import os
from pathlib import Path


def state_directory() -> Path:
    """The service's state directory when systemd gives one (``StateDirectory=crmroute``
    sets ``$STATE_DIRECTORY``), else ``$XDG_STATE_HOME/crmroute``, by default
    ``~/.local/state/crmroute``. Not created here."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "crmroute"

