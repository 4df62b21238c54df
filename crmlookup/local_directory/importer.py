"""CSV import into the local directory: all rows or none, in flat memory.

Two CSV shapes, told apart by their header:

* records: ``module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status``
  (a CRM export; the owner columns create or update the user);
* users: ``id,name,email,extensions``.

Several phones or extensions in one cell are separated by ``;``.
Extensions are stored as given; the router dials only those matching its pattern.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TextIO

from ..errors import DirectoryImportError
from ..phone import InvalidNumber, normalise
from ..records import MODULES

RECORD_COLUMNS = ("module", "id", "name", "phones", "owner_id", "owner_name", "owner_email", "owner_extensions", "status")
USER_COLUMNS = ("id", "name", "email", "extensions")
REQUIRED_RECORD_COLUMNS = {"module", "id", "phones"}
REQUIRED_USER_COLUMNS = {"id"}

MAX_ID_LENGTH = 100
MAX_TEXT_LENGTH = 300
# Enough problems to fix a file in one go without printing a million lines.
MAX_PROBLEMS_REPORTED = 50
# Rows are written to the staging tables this many at a time.
STAGING_BATCH_ROWS = 5000

_MODULE_BY_LOWER = {name.lower(): name for name in MODULES}
_OPEN_WORDS = {"": True, "open": True, "1": True, "true": True, "yes": True}
_CLOSED_WORDS = {"closed": False, "0": False, "false": False, "no": False}


@dataclass
class ImportSummary:
    """How many rows an import wrote."""

    users: int = 0
    records: int = 0
    phones: int = 0


@dataclass
class _User:
    id: str
    name: str
    email: str
    extensions: str


@dataclass
class _Record:
    module: str
    id: str
    name: str
    owner_id: str | None
    is_open: bool
    raw_phones: list[str]
    phones: list[tuple[str, str]] = field(default_factory=list)  # (e164, raw), once normalised


def split_cell(cell: str) -> list[str]:
    """Split a multi-value cell on ``;``."""
    return [part.strip() for part in cell.split(";") if part.strip()]


def import_csv(conn: sqlite3.Connection, source: TextIO, region: str, *, replace: bool = False) -> ImportSummary:
    """Validate every row of ``source`` and write them all in one transaction.

    Rows are staged in temporary tables as they are read, a batch at a time,
    so memory stays flat whatever the size of the file; the directory itself
    changes only once the whole file is known to be good.

    Raises :class:`DirectoryImportError` listing the bad rows; nothing is written then.
    With ``replace`` the directory is emptied first (in the same transaction).
    """
    staging = _Staging(conn)
    try:
        staged = _stage(staging, source, region)
        if staged.problems:
            raise DirectoryImportError(staged.problems[:MAX_PROBLEMS_REPORTED])
        summary = staging.apply(staged.users.values(), replace)
        conn.commit()
        return summary
    except BaseException:
        conn.rollback()
        raise
    finally:
        staging.drop()


def import_csv_text(conn: sqlite3.Connection, text: str, region: str, *, replace: bool = False) -> ImportSummary:
    """:func:`import_csv` for a string (tests, the packaged demo data)."""
    return import_csv(conn, io.StringIO(text), region, replace=replace)


def _row_dict(columns: list[str], row: list[str]) -> dict[str, str]:
    return {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(columns)}


def _check_text(value: str, what: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    if "\x00" in value:
        return f"{what} contains a NUL byte"
    return None


def _parse_users(reader: Iterable[list[str]], columns: list[str]) -> Iterator[tuple[int, _User | str]]:
    """Each row of a users file: the user, or what is wrong with the row."""
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(cell.strip() for cell in row):
            continue
        cells = _row_dict(columns, row)
        yield line, _user_from(cells.get("id", ""), cells.get("name", ""), cells.get("email", ""), cells.get("extensions", ""))


def _user_from(user_id: str, name: str, email: str, extensions: str) -> _User | str:
    if not user_id:
        return "user id is empty"
    for value, what, limit in ((user_id, "user id", MAX_ID_LENGTH), (name, "user name", MAX_TEXT_LENGTH), (email, "email", MAX_TEXT_LENGTH), (extensions, "extensions", MAX_TEXT_LENGTH)):
        problem = _check_text(value, what, limit)
        if problem:
            return problem
    # Stored space-separated; whatever else a cell holds stays, for the router to refuse.
    return _User(user_id, name, email, " ".join(extensions.replace(";", " ").split()))


def _merge_user(old: _User | None, new: _User) -> _User:
    """Rows of one owner may repeat; a later non-empty cell wins."""
    if old is None:
        return new
    return _User(new.id, new.name or old.name, new.email or old.email, new.extensions or old.extensions)


def _parse_records(reader: Iterable[list[str]], columns: list[str]) -> Iterator[tuple[int, _Record | _User | str]]:
    """Each row of a records file: its owner (when the row names one) then the
    record, or what is wrong with the row."""
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(cell.strip() for cell in row):
            continue
        cells = _row_dict(columns, row)
        module = _MODULE_BY_LOWER.get(cells.get("module", "").lower())
        if module is None:
            yield line, f"module {cells.get('module', '')!r} is not one of {', '.join(MODULES)}"
            continue
        record_id, name = cells.get("id", ""), cells.get("name", "")
        if not record_id:
            yield line, "record id is empty"
            continue
        problem = _check_text(record_id, "record id", MAX_ID_LENGTH) or _check_text(name, "name", MAX_TEXT_LENGTH)
        if problem:
            yield line, problem
            continue
        status = cells.get("status", "").lower()
        is_open = _OPEN_WORDS.get(status, _CLOSED_WORDS.get(status))
        if is_open is None:
            yield line, f"status {cells.get('status', '')!r} is not open or closed"
            continue
        phones = split_cell(cells.get("phones", ""))
        if not phones:
            yield line, "no phone number"
            continue
        owner_id = cells.get("owner_id", "") or None
        if owner_id:
            yield line, _user_from(owner_id, cells.get("owner_name", ""), cells.get("owner_email", ""), cells.get("owner_extensions", ""))
        yield line, _Record(module, record_id, name, owner_id, is_open, phones)


@dataclass
class _Staged:
    """What a file held, once read: its users (merged by id) and its problems."""

    users: dict[str, _User] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)


def _stage(staging: _Staging, source: TextIO, region: str) -> _Staged:
    """Read ``source`` row by row: records go to the staging tables, users are merged in memory
    (one entry per owner, few next to the records), bad rows are listed."""
    staged = _Staged()
    try:
        reader = csv.reader(source)
        header = next(reader, None)
        if header is None:
            raise DirectoryImportError([(1, "the file is empty")])
        columns = [name.strip().lower() for name in header]
        if REQUIRED_RECORD_COLUMNS <= set(columns):
            rows = _parse_records(reader, columns)
        elif REQUIRED_USER_COLUMNS <= set(columns) and "module" not in columns:
            rows = _parse_users(reader, columns)
        else:
            raise DirectoryImportError([(1, "header must name the columns module,id,phones (records) or id,name,email,extensions (users)")])
        for line, item in rows:
            if isinstance(item, str):
                staged.problems.append((line, item))
            elif isinstance(item, _User):
                staged.users[item.id] = _merge_user(staged.users.get(item.id), item)
            else:
                _stage_record(staging, staged, line, item, region)
            if len(staged.problems) >= MAX_PROBLEMS_REPORTED:
                break  # enough to fix the file in one go
    except csv.Error as exc:
        raise DirectoryImportError([*staged.problems, (reader.line_num or 1, f"unreadable CSV: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise DirectoryImportError([*staged.problems, (1, f"not UTF-8 text: {exc.reason}")]) from exc
    return staged


def _stage_record(staging: _Staging, staged: _Staged, line: int, record: _Record, region: str) -> None:
    for raw in record.raw_phones:
        try:
            record.phones.append((normalise(raw, region).e164, raw))
        except InvalidNumber as exc:
            staged.problems.append((line, f"phone {raw!r}: {exc}"))
    if not staged.problems:  # once the file is refused, nothing more needs writing
        staging.add(record)


class _Staging:
    """Temporary tables holding the file's records until the whole file is read.

    They live in SQLite's temporary database (on disk past its page cache),
    are seen only by this connection, and are dropped after the import.
    """

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS import_records (module TEXT, id TEXT, name TEXT, owner_id TEXT, is_open INTEGER)")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS import_phones (e164 TEXT, module TEXT, record_id TEXT, raw TEXT)")
        conn.execute("DELETE FROM temp.import_records")
        conn.execute("DELETE FROM temp.import_phones")
        self._records: list[tuple[str, str, str, str | None, int]] = []
        self._phones: list[tuple[str, str, str, str]] = []
        self.records = 0
        self.phones = 0

    def add(self, record: _Record) -> None:
        self._records.append((record.module, record.id, record.name, record.owner_id, int(record.is_open)))
        self._phones.extend((e164, record.module, record.id, raw) for e164, raw in record.phones)
        if len(self._records) >= STAGING_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        self._conn.executemany("INSERT INTO temp.import_records VALUES (?, ?, ?, ?, ?)", self._records)
        self._conn.executemany("INSERT INTO temp.import_phones VALUES (?, ?, ?, ?)", self._phones)
        self.records += len(self._records)
        self.phones += len(self._phones)
        self._records.clear()
        self._phones.clear()

    def apply(self, users: Iterable[_User], replace: bool) -> ImportSummary:
        """Write the staged rows into the directory (the caller commits)."""
        self.flush()
        conn = self._conn
        if replace:
            conn.execute("DELETE FROM phones")
            conn.execute("DELETE FROM records")
            conn.execute("DELETE FROM users")
        user_rows = [(u.id, u.name, u.email, u.extensions) for u in users]
        conn.executemany(
            "INSERT INTO users (id, name, email, extensions) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET "
            "name = CASE WHEN excluded.name != '' THEN excluded.name ELSE users.name END, "
            "email = CASE WHEN excluded.email != '' THEN excluded.email ELSE users.email END, "
            "extensions = CASE WHEN excluded.extensions != '' THEN excluded.extensions ELSE users.extensions END",
            user_rows,
        )
        # In file order, so a record given twice keeps its last row.
        conn.execute(
            "INSERT OR REPLACE INTO records (module, id, name, owner_id, is_open) "
            "SELECT module, id, name, owner_id, is_open FROM temp.import_records ORDER BY rowid"
        )
        # A re-imported record's phones replace the old ones (every row of the file adds its own).
        conn.execute("DELETE FROM phones WHERE (module, record_id) IN (SELECT module, id FROM temp.import_records)")
        conn.execute("INSERT OR IGNORE INTO phones (e164, module, record_id, raw) SELECT e164, module, record_id, raw FROM temp.import_phones")
        return ImportSummary(users=len(user_rows), records=self.records, phones=self.phones)

    def drop(self) -> None:
        self._conn.execute("DROP TABLE IF EXISTS temp.import_records")
        self._conn.execute("DROP TABLE IF EXISTS temp.import_phones")
