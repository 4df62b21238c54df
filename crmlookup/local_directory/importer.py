"""CSV import into the local directory: all rows or none.

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
from typing import Iterable, TextIO

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
    """Validate every row of ``source``, then write them all in one transaction.

    Raises :class:`DirectoryImportError` listing the bad rows; nothing is written then.
    With ``replace`` the directory is emptied first (in the same transaction).
    """
    try:
        reader = csv.reader(source)
        header = next(reader, None)
        if header is None:
            raise DirectoryImportError([(1, "the file is empty")])
        columns = [name.strip().lower() for name in header]
        if REQUIRED_RECORD_COLUMNS <= set(columns):
            users, records = _parse_records(reader, columns)
        elif REQUIRED_USER_COLUMNS <= set(columns) and "module" not in columns:
            users, records = _parse_users(reader, columns), []
        else:
            raise DirectoryImportError([(1, "header must name the columns module,id,phones (records) or id,name,email,extensions (users)")])
    except csv.Error as exc:
        raise DirectoryImportError([(reader.line_num or 1, f"unreadable CSV: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise DirectoryImportError([(1, f"not UTF-8 text: {exc.reason}")]) from exc

    problems: list[tuple[int, str]] = []
    users_by_id: dict[str, _User] = {}
    for line, user in users:
        if isinstance(user, str):
            problems.append((line, user))
        else:
            users_by_id[user.id] = _merge_user(users_by_id.get(user.id), user)
    parsed_records: list[_Record] = []
    for line, record in records:
        if isinstance(record, str):
            problems.append((line, record))
            continue
        for raw in record.raw_phones:
            try:
                record.phones.append((normalise(raw, region).e164, raw))
            except InvalidNumber as exc:
                problems.append((line, f"phone {raw!r}: {exc}"))
        parsed_records.append(record)
    if problems:
        raise DirectoryImportError(problems[:MAX_PROBLEMS_REPORTED])
    return _write(conn, users_by_id.values(), parsed_records, replace)


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


def _parse_users(reader: Iterable[list[str]], columns: list[str]) -> list[tuple[int, _User | str]]:
    out: list[tuple[int, _User | str]] = []
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(cell.strip() for cell in row):
            continue
        cells = _row_dict(columns, row)
        out.append((line, _user_from(cells.get("id", ""), cells.get("name", ""), cells.get("email", ""), cells.get("extensions", ""))))
    return out


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


def _parse_records(reader: Iterable[list[str]], columns: list[str]) -> tuple[list[tuple[int, _User | str]], list[tuple[int, _Record | str]]]:
    users: list[tuple[int, _User | str]] = []
    records: list[tuple[int, _Record | str]] = []
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(cell.strip() for cell in row):
            continue
        cells = _row_dict(columns, row)
        module = _MODULE_BY_LOWER.get(cells.get("module", "").lower())
        if module is None:
            records.append((line, f"module {cells.get('module', '')!r} is not one of {', '.join(MODULES)}"))
            continue
        record_id, name = cells.get("id", ""), cells.get("name", "")
        if not record_id:
            records.append((line, "record id is empty"))
            continue
        problem = _check_text(record_id, "record id", MAX_ID_LENGTH) or _check_text(name, "name", MAX_TEXT_LENGTH)
        if problem:
            records.append((line, problem))
            continue
        status = cells.get("status", "").lower()
        is_open = _OPEN_WORDS.get(status, _CLOSED_WORDS.get(status))
        if is_open is None:
            records.append((line, f"status {cells.get('status', '')!r} is not open or closed"))
            continue
        phones = split_cell(cells.get("phones", ""))
        if not phones:
            records.append((line, "no phone number"))
            continue
        owner_id = cells.get("owner_id", "") or None
        if owner_id:
            users.append((line, _user_from(owner_id, cells.get("owner_name", ""), cells.get("owner_email", ""), cells.get("owner_extensions", ""))))
        records.append((line, _Record(module, record_id, name, owner_id, is_open, phones)))
    return users, records


def _write(conn: sqlite3.Connection, users: Iterable[_User], records: list[_Record], replace: bool) -> ImportSummary:
    summary = ImportSummary()
    with conn:  # one transaction: all rows or none
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
        summary.users = len(user_rows)
        conn.executemany(
            "INSERT OR REPLACE INTO records (module, id, name, owner_id, is_open) VALUES (?, ?, ?, ?, ?)",
            [(r.module, r.id, r.name, r.owner_id, int(r.is_open)) for r in records],
        )
        # A re-imported record's phones replace the old ones.
        conn.executemany("DELETE FROM phones WHERE module = ? AND record_id = ?", [(r.module, r.id) for r in records])
        phone_rows = [(e164, r.module, r.id, raw) for r in records for e164, raw in r.phones]
        conn.executemany("INSERT OR IGNORE INTO phones (e164, module, record_id, raw) VALUES (?, ?, ?, ?)", phone_rows)
        summary.records = len(records)
        summary.phones = len(phone_rows)
    return summary
