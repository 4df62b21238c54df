"""The local directory backend: one SQLite file, the embedded default CRM."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ..errors import DirectoryError
from ..files import create_private_file
from ..phone import PhoneNumber
from ..sqlite_thread import ConnectionThread
from ..records import LookupResult, Match, Owner
from .importer import ImportSummary, import_csv
from .schema import ensure_schema, is_directory

T = TypeVar("T")

DEMO_CSV = "demo_directory.csv"
# The demo numbers are written as a Spanish office would type them.
DEMO_REGION = "ES"

_LOOKUP_SQL = """
SELECT r.module, r.id, r.name, r.is_open, r.owner_id, u.name, u.email, u.extensions
FROM phones p
JOIN records r ON r.module = p.module AND r.id = p.record_id
LEFT JOIN users u ON u.id = r.owner_id
WHERE p.e164 = ?
"""

# Distinct owners remembered at once (a sales team is far smaller).
_MAX_OWNERS_KEPT = 10_000

# Leads and deals can be closed; a closed one no longer decides who the caller belongs to.
_MODULES_WITH_STATUS = frozenset({"Leads", "Deals"})


def open_connection(path: str | Path, *, create: bool = False) -> sqlite3.Connection:
    """Open a directory file; with ``create`` a missing file gets an empty directory (mode 0600).

    Raises :class:`DirectoryError` when the file is missing or is not a directory.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise DirectoryError(f"directory file not found: {path}")
    try:
        if create:
            create_private_file(path)
    except OSError as exc:
        raise DirectoryError(f"cannot create directory {path}: {exc.strerror or exc}") from None
    try:
        conn = sqlite3.connect(path, check_same_thread=False)
        if create:
            ensure_schema(conn)
        elif not is_directory(conn):
            conn.close()
            raise DirectoryError(f"{path} is not a crmroute directory (no users/records/phones tables)")
    except sqlite3.DatabaseError as exc:
        raise DirectoryError(f"cannot open directory {path}: {exc}") from exc
    return conn


def open_demo_connection() -> sqlite3.Connection:
    """An in-memory directory filled with the packaged demo data."""
    from importlib import resources  # only the demo needs it; a process per call should not pay for it

    conn = sqlite3.connect(":memory:", check_same_thread=False)
    ensure_schema(conn)
    with resources.files(__package__).joinpath(DEMO_CSV).open(encoding="utf-8", newline="") as demo:
        import_csv(conn, demo, DEMO_REGION)
    return conn


class LocalDirectory:
    """The embedded CRM: users, records and phones in one SQLite file.

    Lookups are a single index seek. The async :meth:`lookup` runs it on one
    dedicated thread so the event loop never waits on the disk; the connection
    is only ever used from that thread or, in the synchronous CLI, the caller's.
    """

    name = "local"

    def __init__(self, conn: sqlite3.Connection, description: str):
        self._conn = conn
        self.description = description
        self._thread = ConnectionThread(conn, "local-directory")
        # One Owner per distinct owner row: a cache holding many numbers of the
        # same few salespeople then holds each of them once, not once per number.
        self._owners: dict[tuple, Owner] = {}

    @classmethod
    def open(cls, path: str | Path | None) -> "LocalDirectory":
        """The directory at ``path``, or the packaged demo directory when ``path`` is empty."""
        if not path:
            return cls(open_demo_connection(), "demo directory (packaged)")
        return cls(open_connection(path), str(path))

    def lookup_sync(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        """Blocking form of :meth:`lookup`."""
        try:
            rows = self._conn.execute(_LOOKUP_SQL, (number.e164,)).fetchall()
        except sqlite3.Error as exc:
            raise DirectoryError(f"directory lookup failed: {exc}") from exc
        rank = {module: i for i, module in enumerate(modules)}
        matches = []
        for module, record_id, name, is_open, owner_id, owner_name, email, extensions in rows:
            if module not in rank or (module in _MODULES_WITH_STATUS and not is_open):
                continue
            owner = self._owner(owner_id, owner_name, email, extensions) if owner_id else None
            matches.append(Match(sys.intern(module), record_id, name, owner, bool(is_open)))
        matches.sort(key=lambda m: (rank[m.module], m.record_id))
        step = f"local directory: {number.e164} -> {len(matches)} open record(s) of {len(rows)} matching"
        return LookupResult(matches=matches, steps=[step])

    def _owner(self, owner_id: str, name: str | None, email: str | None, extensions: str | None) -> Owner:
        row = (owner_id, name, email, extensions)
        owner = self._owners.get(row)
        if owner is None:
            if len(self._owners) >= _MAX_OWNERS_KEPT:
                self._owners.clear()
            owner = self._owners[row] = Owner(owner_id, name or "", email or "", tuple((extensions or "").split()))
        return owner

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        return await self.run(self.lookup_sync, number, modules)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on the directory's own thread (the only one using the connection)."""
        return await self._thread.run(function, *args)

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection; use it only inside :meth:`run` (or from synchronous code)."""
        return self._conn

    def import_csv(self, source, region: str, *, replace: bool = False) -> ImportSummary:
        """Load a CSV export (see :mod:`.importer`); all rows or none."""
        return import_csv(self._conn, source, region, replace=replace)

    def counts(self) -> dict[str, int]:
        """Rows per table, for the CLI."""
        return {table: self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("users", "records", "phones")}

    def close(self) -> None:
        self._thread.close()

    async def aclose(self) -> None:
        await self._thread.aclose()
