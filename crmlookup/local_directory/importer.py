"""CSV import into the local directory: every row or none (or, asked, the good ones), in flat memory.

Two CSV shapes, told apart by their header:

* records: ``module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status``
  (a CRM export; the owner columns create or update the user);
* users: ``id,name,email,extensions``.

A file is read as spreadsheets and CRMs write it: a UTF-8 byte-order mark
(Excel's "CSV UTF-8" always writes one) is dropped, ``;`` is read as the
separator when the header uses it (Excel in Spanish, French, German...),
CRLF line ends and quoted cells are CSV's own. Several phones or extensions
in one cell are separated by ``;`` (inside quotes in a ``;``-separated file).

What makes a row bad is what would route a call wrongly: an unknown module,
a number that is not one, an extension the router would never dial (``10 1``,
``101,102``), a record given twice. A record without any phone number is not
bad, only useless for routing: it is skipped and counted.
"""

from __future__ import annotations

import csv
import io
import itertools
import sqlite3
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from ..errors import DirectoryImportError
from ..extensions import NotAnExtensionList, is_safe_extension, split_extensions
from ..phone import InvalidNumber, normalise
from ..records import MODULES

RECORD_COLUMNS = ("module", "id", "name", "phones", "owner_id", "owner_name", "owner_email", "owner_extensions", "status")
USER_COLUMNS = ("id", "name", "email", "extensions")
REQUIRED_RECORD_COLUMNS = {"module", "id", "phones"}
REQUIRED_USER_COLUMNS = {"id"}
# Separators a header is tried with, in order.
DELIMITERS = (",", ";", "\t")
# What separates several values inside one cell.
CELL_SEPARATOR = ";"

MAX_ID_LENGTH = 100
MAX_TEXT_LENGTH = 300
# Enough problems to fix a file in one go without printing a million lines.
MAX_PROBLEMS_REPORTED = 50
# Rows are written to the staging tables this many at a time.
STAGING_BATCH_ROWS = 5000
# Lines without a phone number named in the summary (the rest are counted).
MAX_LINES_NAMED = 10

_MODULE_BY_LOWER = {name.lower(): name for name in MODULES}
_OPEN_WORDS = {"": True, "open": True, "1": True, "true": True, "yes": True}
_CLOSED_WORDS = {"closed": False, "0": False, "false": False, "no": False}
_BOM = "\ufeff"
# Records crmroute created itself (leads for unknown callers) carry this origin; --replace keeps them.
ORIGIN_CALL = "call"


@dataclass
class ImportSummary:
    """What an import wrote (or, for a dry run, would have written) and what it left out."""

    users: int = 0
    records: int = 0
    phones: int = 0
    # Records without any phone number: skipped (nothing could route to them).
    without_phone: int = 0
    without_phone_lines: list[int] = field(default_factory=list)
    # Bad rows left out with skip_invalid: the first MAX_PROBLEMS_REPORTED, and how many in all.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    skipped_count: int = 0
    # With replace: leads crmroute created from calls, kept.
    kept_leads: int = 0
    dry_run: bool = False


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


@dataclass
class _Row:
    """One good-looking row of a records file: its record and its owner (phones not yet read)."""

    record: _Record
    owner: _User | None


def split_cell(cell: str) -> list[str]:
    """Split a multi-value cell on ``;``."""
    return [part.strip() for part in cell.split(CELL_SEPARATOR) if part.strip()]


class UndecodableLine(ValueError):
    """A line of the file is not UTF-8; names the line and the byte."""

    def __init__(self, line: int, byte: int, column: int):
        self.line = line
        super().__init__(
            f"not UTF-8 text (byte 0x{byte:02x} at byte {column}): save the file as \"CSV UTF-8\" "
            "(in Excel: Save As, CSV UTF-8), or convert it, e.g. iconv -f cp1252 -t utf-8"
        )


def utf8_lines(raw: BinaryIO) -> Iterator[str]:
    """The lines of a file as text, one at a time; a byte that is not UTF-8 raises
    :class:`UndecodableLine` naming its own line (a line is read only when it is needed)."""
    for number, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UndecodableLine(number, line[exc.start], exc.start + 1) from None
        yield text


def import_csv(
    conn: sqlite3.Connection,
    source: Iterable[str],
    region: str,
    *,
    replace: bool = False,
    skip_invalid: bool = False,
    dry_run: bool = False,
    valid_extension: Callable[[str], bool] = is_safe_extension,
) -> ImportSummary:
    """Validate every row of ``source`` (lines of text) and write them in one transaction.

    Rows are staged in temporary tables as they are read, a batch at a time,
    so memory stays flat whatever the size of the file; the directory itself
    changes only once the whole file is known to be good.

    Raises :class:`DirectoryImportError` listing the bad rows; nothing is written
    then. With ``skip_invalid`` the good rows are written and the bad ones
    listed in the summary. With ``replace`` the directory is emptied first (in
    the same transaction), but for the leads crmroute created from calls.
    ``dry_run`` does everything but commit. ``valid_extension`` is the router's
    own test, so no extension is imported that would never be dialled.
    """
    staging = _Staging(conn)
    try:
        staged = _stage(staging, source, region, skip_invalid, valid_extension)
        summary = staging.apply(staged, replace, skip_invalid)
        summary.dry_run = dry_run
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
        return summary
    except BaseException:
        conn.rollback()
        raise
    finally:
        staging.drop()


def import_csv_text(conn: sqlite3.Connection, text: str, region: str, **options: Any) -> ImportSummary:
    """:func:`import_csv` for a string (tests, the packaged demo data)."""
    return import_csv(conn, io.StringIO(text), region, **options)


def _row_dict(columns: list[str], row: list[str]) -> dict[str, str]:
    return {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(columns)}


def _check_text(value: str, what: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    if "\x00" in value:
        return f"{what} contains a NUL byte"
    return None


def _parse_users(reader: Iterable[list[str]], columns: list[str], valid: Callable[[str], bool]) -> Iterator[tuple[int, _User | str]]:
    """Each row of a users file: the user, or what is wrong with the row."""
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(cell.strip() for cell in row):
            continue
        cells = _row_dict(columns, row)
        yield line, _user_from(cells.get("id", ""), cells.get("name", ""), cells.get("email", ""), cells.get("extensions", ""), valid)


def _user_from(user_id: str, name: str, email: str, extensions: str, valid: Callable[[str], bool]) -> _User | str:
    if not user_id:
        return "user id is empty"
    for value, what, limit in ((user_id, "user id", MAX_ID_LENGTH), (name, "user name", MAX_TEXT_LENGTH), (email, "email", MAX_TEXT_LENGTH), (extensions, "extensions", MAX_TEXT_LENGTH)):
        problem = _check_text(value, what, limit)
        if problem:
            return problem
    try:
        parsed = split_extensions(extensions, CELL_SEPARATOR, valid)
    except NotAnExtensionList as exc:
        return f"extension {exc} that the router would dial (several in one cell are separated by ;)"
    # Stored space-separated: a valid extension holds no space.
    return _User(user_id, name, email, " ".join(parsed))


def _merge_user(old: _User | None, new: _User) -> _User:
    """Rows of one owner may repeat; a later non-empty cell wins."""
    if old is None:
        return new
    return _User(new.id, new.name or old.name, new.email or old.email, new.extensions or old.extensions)


def _parse_records(reader: Iterable[list[str]], columns: list[str], valid: Callable[[str], bool]) -> Iterator[tuple[int, _Row | str | None]]:
    """Each row of a records file: the row, what is wrong with it, or None for a record without a phone."""
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(cell.strip() for cell in row):
            continue
        yield line, _record_row(_row_dict(columns, row), valid)


def _record_row(cells: dict[str, str], valid: Callable[[str], bool]) -> _Row | str | None:
    module = _MODULE_BY_LOWER.get(cells.get("module", "").lower())
    if module is None:
        return f"module {cells.get('module', '')!r} is not one of {', '.join(MODULES)}"
    record_id, name = cells.get("id", ""), cells.get("name", "")
    if not record_id:
        return "record id is empty"
    problem = _check_text(record_id, "record id", MAX_ID_LENGTH) or _check_text(name, "name", MAX_TEXT_LENGTH)
    if problem:
        return problem
    status = cells.get("status", "").lower()
    is_open = _OPEN_WORDS.get(status, _CLOSED_WORDS.get(status))
    if is_open is None:
        return f"status {cells.get('status', '')!r} is not open or closed"
    owner_id = cells.get("owner_id", "") or None
    owner: _User | None = None
    if owner_id:
        user = _user_from(owner_id, cells.get("owner_name", ""), cells.get("owner_email", ""), cells.get("owner_extensions", ""), valid)
        if isinstance(user, str):
            return user
        owner = user
    phones = split_cell(cells.get("phones", ""))
    if not phones:
        return None
    return _Row(_Record(module, record_id, name, owner_id, is_open, phones), owner)


@dataclass
class _Staged:
    """What a file held, once read: its users (merged by id), its problems, what it left out."""

    users: dict[str, _User] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)
    problem_count: int = 0
    without_phone: int = 0
    without_phone_lines: list[int] = field(default_factory=list)
    stopped_at: int = 0  # the line reading stopped at (the problem limit), else 0

    def problem(self, line: int, reason: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_REPORTED:
            self.problems.append((line, reason))


def _reader(source: Iterable[str]) -> tuple[Iterator[list[str]], list[str]]:
    """A CSV reader for ``source`` with the separator its header uses, and the header's column names."""
    lines = iter(source)
    first = next(lines, None)
    if first is None or not first.strip(_BOM + " \t\r\n"):
        raise DirectoryImportError([(1, "the file is empty")])
    first = first.lstrip(_BOM)
    for delimiter in DELIMITERS:
        columns = [name.strip().lstrip(_BOM).lower() for name in next(csv.reader([first], delimiter=delimiter))]
        if _shape(columns):
            reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
            next(reader)  # the header, read again so the reader's line numbers are the file's
            return reader, columns
    raise DirectoryImportError([(
        1,
        "header must name the columns module,id,phones (records) or id,name,email,extensions (users), "
        f"separated by , or ; (found: {', '.join(repr(c) for c in columns[:6])})",
    )])


def _shape(columns: list[str]) -> str:
    """``records``, ``users``, or empty for a header that is neither."""
    names = set(columns)
    if REQUIRED_RECORD_COLUMNS <= names:
        return "records"
    if REQUIRED_USER_COLUMNS <= names and not names & {"module", "phones"}:
        return "users"
    return ""


def _stage(staging: _Staging, source: Iterable[str], region: str, skip_invalid: bool, valid: Callable[[str], bool]) -> _Staged:
    """Read ``source`` row by row: records go to the staging tables, users are merged in memory
    (one entry per owner, few next to the records), bad rows are listed."""
    staged = _Staged()
    reader = None
    try:
        reader, columns = _reader(source)
        if _shape(columns) == "records":
            _stage_records(staging, staged, _parse_records(reader, columns, valid), region, skip_invalid)
        else:
            for line, item in _parse_users(reader, columns, valid):
                if isinstance(item, str):
                    staged.problem(line, item)
                    if _hopeless(staged, skip_invalid, line):
                        break
                else:
                    staged.users[item.id] = _merge_user(staged.users.get(item.id), item)
    except csv.Error as exc:
        staged.problem(getattr(reader, "line_num", 0) or 1, f"unreadable CSV: {exc}")
        raise DirectoryImportError(staged.problems, staged.problem_count) from exc
    except UndecodableLine as exc:
        staged.problem(exc.line, str(exc))
        raise DirectoryImportError(staged.problems, staged.problem_count) from None
    except UnicodeDecodeError as exc:  # a text stream opened by the caller
        staged.problem(getattr(reader, "line_num", 0) or 1, f"not UTF-8 text: {exc.reason}")
        raise DirectoryImportError(staged.problems, staged.problem_count) from exc
    if staged.problems and not skip_invalid:
        raise DirectoryImportError(staged.problems, staged.problem_count, stopped_at=staged.stopped_at)
    return staged


def _stage_records(staging: _Staging, staged: _Staged, rows: Iterator[tuple[int, _Row | str | None]], region: str, skip_invalid: bool) -> None:
    for line, item in rows:
        if item is None:
            staged.without_phone += 1
            if len(staged.without_phone_lines) < MAX_LINES_NAMED:
                staged.without_phone_lines.append(line)
            continue
        if isinstance(item, str):
            staged.problem(line, item)
        elif _normalise_phones(staged, line, item.record, region):
            if item.owner is not None:
                staged.users[item.owner.id] = _merge_user(staged.users.get(item.owner.id), item.owner)
            if skip_invalid or not staged.problems:  # once the file is refused, nothing more needs writing
                staging.add(line, item.record)
        if _hopeless(staged, skip_invalid, line):
            break


def _hopeless(staged: _Staged, skip_invalid: bool, line: int) -> bool:
    """True when reading should stop: a file refused already has enough problems listed to be fixed."""
    if not skip_invalid and staged.problem_count >= MAX_PROBLEMS_REPORTED:
        staged.stopped_at = line
        return True
    return False


def _normalise_phones(staged: _Staged, line: int, record: _Record, region: str) -> bool:
    """Fill ``record.phones``; False (the problems listed) when a phone is not a number."""
    bad = []
    for raw in record.raw_phones:
        try:
            record.phones.append((normalise(raw, region).e164, raw))
        except InvalidNumber as exc:
            bad.append(f"phone {raw!r}: {exc}")
    if bad:
        staged.problem(line, "; ".join(bad))
    return not bad


class _Staging:
    """Temporary tables holding the file's records until the whole file is read.

    They live in SQLite's temporary database (on disk past its page cache),
    are seen only by this connection, and are dropped after the import.
    """

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        conn.execute("DROP TABLE IF EXISTS temp.import_records")
        conn.execute("DROP TABLE IF EXISTS temp.import_phones")
        conn.execute("CREATE TEMP TABLE import_records (line INTEGER, module TEXT, id TEXT, name TEXT, owner_id TEXT, is_open INTEGER)")
        conn.execute("CREATE TEMP TABLE import_phones (line INTEGER, e164 TEXT, module TEXT, record_id TEXT, raw TEXT)")
        self._records: list[tuple[int, str, str, str, str | None, int]] = []
        self._phones: list[tuple[int, str, str, str, str]] = []

    def add(self, line: int, record: _Record) -> None:
        self._records.append((line, record.module, record.id, record.name, record.owner_id, int(record.is_open)))
        self._phones.extend((line, e164, record.module, record.id, raw) for e164, raw in record.phones)
        if len(self._records) >= STAGING_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        self._conn.executemany("INSERT INTO temp.import_records VALUES (?, ?, ?, ?, ?, ?)", self._records)
        self._conn.executemany("INSERT INTO temp.import_phones VALUES (?, ?, ?, ?, ?)", self._phones)
        self._records.clear()
        self._phones.clear()

    def repeated_records(self) -> Iterator[tuple[int, int, str, str]]:
        """``(line, first line, module, id)`` for each row that gives a record already given above it."""
        self._conn.execute("CREATE INDEX temp.import_records_key ON import_records (module, id, line)")
        return self._conn.execute(
            "SELECT r.line, f.first, r.module, r.id FROM temp.import_records r "
            "JOIN (SELECT module, id, min(line) AS first FROM temp.import_records GROUP BY module, id HAVING count(*) > 1) f "
            "ON f.module = r.module AND f.id = r.id WHERE r.line > f.first ORDER BY r.line"
        )

    def apply(self, staged: _Staged, replace: bool, skip_invalid: bool) -> ImportSummary:
        """Write the staged rows into the directory (the caller commits); raises for records given twice."""
        self.flush()
        conn = self._conn
        repeated = []
        for line, first, module, record_id in self.repeated_records():
            staged.problem(line, f"{module} {record_id} is also on line {first}: give each record once (several phones go in one cell, separated by ;)")
            repeated.append((line,))
        if repeated and not skip_invalid:
            raise DirectoryImportError(sorted(staged.problems), staged.problem_count)
        conn.executemany("DELETE FROM temp.import_records WHERE line = ?", repeated)
        conn.executemany("DELETE FROM temp.import_phones WHERE line = ?", repeated)
        kept_leads = self._empty_directory() if replace else 0
        user_rows = [(u.id, u.name, u.email, u.extensions) for u in staged.users.values()]
        conn.executemany(
            "INSERT INTO users (id, name, email, extensions) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET "
            "name = CASE WHEN excluded.name != '' THEN excluded.name ELSE users.name END, "
            "email = CASE WHEN excluded.email != '' THEN excluded.email ELSE users.email END, "
            "extensions = CASE WHEN excluded.extensions != '' THEN excluded.extensions ELSE users.extensions END",
            user_rows,
        )
        records = conn.execute(
            "INSERT OR REPLACE INTO records (module, id, name, owner_id, is_open, origin) "
            "SELECT module, id, name, owner_id, is_open, 'import' FROM temp.import_records ORDER BY line"
        ).rowcount
        # A re-imported record's phones replace the old ones.
        conn.execute("DELETE FROM phones WHERE (module, record_id) IN (SELECT module, id FROM temp.import_records)")
        phones = conn.execute(
            "INSERT OR IGNORE INTO phones (e164, module, record_id, raw) SELECT e164, module, record_id, raw FROM temp.import_phones ORDER BY line"
        ).rowcount
        problems = sorted(staged.problems)
        return ImportSummary(
            users=len(user_rows),
            records=records,
            phones=phones,
            without_phone=staged.without_phone,
            without_phone_lines=staged.without_phone_lines,
            skipped=problems[:MAX_PROBLEMS_REPORTED],
            skipped_count=staged.problem_count,
            kept_leads=kept_leads,
        )

    def _empty_directory(self) -> int:
        """Delete what an import brought (the leads crmroute created from calls stay, with their owners); returns how many leads stay."""
        conn = self._conn
        kept = "SELECT module, id FROM records WHERE origin = ?"
        conn.execute(f"DELETE FROM phones WHERE (module, record_id) NOT IN ({kept})", (ORIGIN_CALL,))
        conn.execute("DELETE FROM records WHERE origin != ?", (ORIGIN_CALL,))
        conn.execute("DELETE FROM users WHERE id NOT IN (SELECT owner_id FROM records WHERE owner_id IS NOT NULL)")
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])

    def drop(self) -> None:
        self._conn.execute("DROP TABLE IF EXISTS temp.import_records")
        self._conn.execute("DROP TABLE IF EXISTS temp.import_phones")
