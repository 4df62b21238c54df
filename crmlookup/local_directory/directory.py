"""The local directory backend: one SQLite file, the embedded default CRM."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, ParamSpec, Sequence, TypeVar

from ..errors import DirectoryError
from ..files import create_private_file
from ..phone import PhoneNumber
from ..sqlite_thread import ConnectionThread
from ..state import state_directory
from ..records import LookupResult, Match, Owner
from .importer import ImportSummary, import_csv, utf8_lines
from .schema import ensure_schema, has_links, is_directory

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("crmroute.directory")

DEMO_CSV = "demo_directory.csv"
DEMO_FILE = "demo-directory.sqlite"
# The demo numbers are written as a Spanish office would type them.
DEMO_REGION = "ES"

_SELECT = "SELECT r.module, r.id, r.name, r.is_open, r.owner_id, u.name, u.email, u.extensions, {via} "

# The records that hold the number, then those reached through them (a deal
# through its contact or account: see the ``links`` table).
_LOOKUP_SQL = (
    _SELECT.format(via="'', '', ''")
    + """FROM phones p
JOIN records r ON r.module = p.module AND r.id = p.record_id
LEFT JOIN users u ON u.id = r.owner_id
WHERE p.e164 = ?"""
)
_LOOKUP_WITH_LINKS_SQL = (
    _LOOKUP_SQL
    + "\nUNION ALL\n"
    + _SELECT.format(via="l.parent_module, l.parent_id, coalesce(parent.name, '')")
    + """FROM phones p
JOIN links l ON l.parent_module = p.module AND l.parent_id = p.record_id
JOIN records r ON r.module = l.module AND r.id = l.record_id
LEFT JOIN records parent ON parent.module = l.parent_module AND parent.id = l.parent_id
LEFT JOIN users u ON u.id = r.owner_id
WHERE p.e164 = ?"""
)

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
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    _fill_with_demo_data(conn)
    return conn


def _fill_with_demo_data(conn: sqlite3.Connection) -> None:
    from importlib import resources  # only the demo needs it; a process per call should not pay for it

    ensure_schema(conn)
    text = resources.files(__package__).joinpath(DEMO_CSV).read_bytes().decode("utf-8")
    import_csv(conn, io.StringIO(text, newline=""), DEMO_REGION)


def demo_directory_path() -> Path:
    """The demo directory's file: in crmroute's state directory, next to the outbox."""
    return state_directory() / DEMO_FILE


def open_demo_file(path: Path) -> sqlite3.Connection:
    """The demo directory kept in ``path``, made from the packaged data the first time.

    Kept in a file, not in memory, so what the call outcomes leave there (new
    leads, call history) survives a restart, as the outbox that delivered them
    says it does. Made whole in a temporary file and moved into place, so two
    processes starting at once never see half of it.
    """
    if not path.exists():
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        create_private_file(temporary)  # its folder too: callers' data, the service's own
        conn = sqlite3.connect(temporary)
        try:
            _fill_with_demo_data(conn)
        finally:
            conn.close()
        os.replace(temporary, path)
    return open_connection(path)


class LocalDirectory:
    """The embedded CRM: users, records and phones in one SQLite file.

    Lookups are a single index seek. The async :meth:`lookup` runs it on one
    dedicated thread so the event loop never waits on the disk; the connection
    is only ever used from that thread or, in the synchronous CLI, the caller's.
    """

    def __init__(self, conn: sqlite3.Connection, description: str, *, name: str = "local", source: str = "directory"):
        self._conn = conn
        self.description = description
        self.name = name
        # How its answers are named in --explain and the call log ("directory"; a CRM's mirror says "mirror").
        self.source_name = source
        self.name_in_steps = "local directory" if source == "directory" else source
        self._thread = ConnectionThread(conn, "local-directory")
        self._links = has_links(conn)
        # One Owner per distinct owner row: a cache holding many numbers of the
        # same few salespeople then holds each of them once, not once per number.
        self._owners: dict[tuple[Any, ...], Owner] = {}

    @classmethod
    def open(cls, path: str | Path | None) -> LocalDirectory:
        """The directory at ``path``, or the packaged demo directory (kept in the state
        directory, see :func:`open_demo_file`) when ``path`` is empty."""
        if path:
            return cls(open_connection(path), str(path))
        demo = demo_directory_path()
        try:
            return cls(open_demo_file(demo), f"demo directory ({demo})")
        except (OSError, sqlite3.Error, DirectoryError) as exc:
            logger.warning("cannot keep the demo directory in %s (%s): using one in memory; what calls leave in it is lost on restart", demo, exc)
            return cls(open_demo_connection(), "demo directory (in memory)")

    def lookup_sync(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        """Blocking form of :meth:`lookup`."""
        try:
            if self._links:
                rows = self._conn.execute(_LOOKUP_WITH_LINKS_SQL, (number.e164, number.e164)).fetchall()
            else:
                rows = self._conn.execute(_LOOKUP_SQL, (number.e164,)).fetchall()
        except sqlite3.Error as exc:
            raise DirectoryError(f"directory lookup failed: {exc}") from exc
        rank = {module: i for i, module in enumerate(modules)}
        # Like the CRM's own rule: a deal is reached through the caller's contact,
        # or, when no contact holds the number, through the caller's account.
        holders = {row[0] for row in rows if not row[8]}
        skip_via = "Accounts" if "Contacts" in holders else None
        matches: dict[tuple[str, str], Match] = {}
        passed_over = []
        for module, record_id, name, is_open, owner_id, owner_name, email, extensions, via, via_id, via_name in rows:
            if via == skip_via or (module, record_id) in matches:
                continue  # an account's deal when a contact holds the number; a deal reached twice
            if module not in rank:
                passed_over.append(f"{module} {record_id} ({module} is not in the lookup order)")
                continue
            if module in _MODULES_WITH_STATUS and not is_open:
                passed_over.append(f"{module} {record_id} is closed")
                continue
            owner = self._owner(owner_id, owner_name, email, extensions) if owner_id else None
            # A deal reached through the caller's contact (or account) names that record: the caller.
            matches[(module, record_id)] = Match(sys.intern(module), record_id, name, owner, bool(is_open), via, via_id, via_name)
        ordered = sorted(matches.values(), key=lambda m: (rank[m.module], m.record_id))
        passed_over = sorted(set(passed_over))
        step = f"{self.name_in_steps}: {number.e164} -> {len(ordered)} open record(s) of {len(rows)} matching"
        if passed_over:
            step += f"; not counted: {', '.join(passed_over)}"
        return LookupResult(matches=ordered, steps=[step], passed_over=passed_over, known=bool(rows), source=self.source_name)

    def _owner(self, owner_id: str, name: str | None, email: str | None, extensions: str | None) -> Owner:
        row = (owner_id, name, email, extensions)
        owner = self._owners.get(row)
        if owner is None:
            if len(self._owners) >= _MAX_OWNERS_KEPT:
                self._owners.clear()
            owner = self._owners[row] = Owner(owner_id, name or "", email or "", tuple((extensions or "").split()))
        return owner

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        return await self.on_thread(self.lookup_sync, number, modules)

    async def on_thread(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` on the directory's own thread (the only one using the connection), awaited."""
        return await self._thread.call(function, *args, **kwargs)

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection; use it only inside :meth:`run` (or from synchronous code)."""
        return self._conn

    def import_csv(self, source: Iterable[str], region: str, **options: Any) -> ImportSummary:
        """Load a CSV export given as lines of text (see :func:`.importer.import_csv` for the options)."""
        return import_csv(self._conn, source, region, **options)

    def import_file(self, path: str | Path, region: str, **options: Any) -> ImportSummary:
        """Load a CSV file; a byte that is not UTF-8 is reported on its own line."""
        with open(path, "rb") as raw:
            return import_csv(self._conn, utf8_lines(raw), region, **options)

    def counts(self) -> dict[str, int]:
        """Rows per table, for the CLI."""
        return {table: self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("users", "records", "phones")}

    def close(self) -> None:
        self._thread.close()

    async def aclose(self) -> None:
        await self._thread.aclose()
