"""Which build is running: the version, and the commit it was built from when that is known.

Known from, in order: pip's record of a package installed from a git URL
(``direct_url.json``, PEP 610: ``vcs_info.commit_id``); the git work tree the
package runs from (an editable install, a checkout); otherwise the build is a
release named by its version alone. Read once, at start or for ``--version``,
never on a call's path.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from . import __version__

DISTRIBUTION = "crmroute"
UNKNOWN = "unknown"


def build_info() -> dict[str, str]:
    """``{"version": "0.2.0", "commit": "1a2b3c4d5e6f", "source": "git checkout"}``."""
    commit, source = _commit_from_install() or _commit_from_work_tree() or (UNKNOWN, "release")
    return {"version": __version__, "commit": commit, "source": source}


def version_text() -> str:
    """What ``crmroute --version`` prints."""
    info = build_info()
    built = "release build" if info["commit"] == UNKNOWN else f"commit {info['commit']} ({info['source']})"
    return f"crmroute {info['version']}, {built}"


def _commit_from_install() -> tuple[str, str] | None:
    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        commit = json.loads(text or "{}").get("vcs_info", {}).get("commit_id", "")
    except (ValueError, AttributeError):
        return None
    return (commit[:12], "installed from git") if isinstance(commit, str) and commit else None


def _commit_from_work_tree() -> tuple[str, str] | None:
    here = Path(__file__).resolve().parent
    if not (here.parent / "setup.cfg").is_file():
        return None  # installed into site-packages: a git tree around it is not ours
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12", "--exclude", "*"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or not commit:
        return None
    return commit, "git checkout"
