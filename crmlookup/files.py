"""Files that hold callers' data, created readable by their owner only.

The outbox (callers' numbers and call history), the local directory (names,
numbers, owners), the CRM mirror and the shared token file are private to the
service's user: each is created with mode 0600, and a folder made for one with
mode 0700. A file or folder that already exists keeps the mode its admin gave
it. SQLite gives a database's ``-wal`` and ``-shm`` files the database's own
mode, so creating the database file here is enough.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700


def ensure_private_directory(path: str | os.PathLike[str]) -> None:
    """Create the folder ``path`` and each missing parent with mode 0700 (existing ones are left alone).

    Raises OSError as :func:`os.mkdir` does (a parent that is a file, a read-only folder).
    """
    missing = []
    folder = Path(path)
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process


def open_private_file(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open(path, flags)``, a file it creates getting mode 0600; returns the descriptor."""
    return os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode 0600 (its missing folders 0700) unless it exists; True if it was created."""
    ensure_private_directory(Path(path).parent)
    try:
        descriptor = open_private_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True
