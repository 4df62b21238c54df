"""``crmroute directory import`` with the files admins really have: Excel's, a CRM's, a Spanish locale's."""

from __future__ import annotations

import asyncio
import pytest
from click.testing import CliRunner

from crmlookup.local_directory import LocalDirectory, open_connection
from crmlookup.local_directory.writer import LocalDirectoryWriter
from crmlookup.phone import normalise
from crmlookup.writer import LeadEntry, WriteKind
from fastagi_server.cli import cli

HEADER = "module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status"
ORDER = ["Leads", "Deals", "Contacts", "Accounts"]


def write_csv(path, lines: list[str], *, newline: str = "\n", bom: bool = False, encoding: str = "utf-8") -> str:
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode(encoding))
    return str(path)


def run_import(tmp_path, csv_path: str, *args: str, config: str | None = None):
    db = tmp_path / "dir.sqlite"
    if config is None:
        config_file = tmp_path / "c.toml"
        config_file.write_text('[routing]\ndefault_region = "ES"\n')
        config = str(config_file)
    result = CliRunner().invoke(cli, ["directory", "import", csv_path, "--path", str(db), "--config", config, *args])
    return result, db


def contents(db) -> dict[str, list[tuple]]:
    conn = open_connection(db)
    try:
        return {
            "users": conn.execute("SELECT id, extensions FROM users ORDER BY id").fetchall(),
            "records": conn.execute("SELECT module, id, name FROM records ORDER BY module, id").fetchall(),
            "phones": conn.execute("SELECT e164, record_id FROM phones ORDER BY e164, record_id").fetchall(),
        }
    finally:
        conn.close()


def owner_of(db, number: str):
    store = LocalDirectory(open_connection(db), str(db))
    try:
        best = store.lookup_sync(normalise(number, "ES"), ORDER).best
        return best and (best.record_id, best.owner.extensions if best.owner else ())
    finally:
        store.close()


# -- what Excel writes -----------------------------------------------------------------


def test_a_records_file_with_a_byte_order_mark_is_a_records_file(tmp_path):
    """Excel's "CSV UTF-8" always starts with a BOM; the header is still ``module,...``."""
    path = write_csv(tmp_path / "export.csv", [HEADER, "Contacts,C-1,Zoe,+34 928 123 456,u9,Iker,iker@example.com,109,"], bom=True, newline="\r\n")
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert "imported 1 record(s), 1 phone(s), 1 user(s)" in result.stdout
    assert contents(db)["records"] == [("Contacts", "C-1", "Zoe")]
    assert owner_of(db, "928123456") == ("C-1", ("109",))


def test_a_semicolon_separated_file_with_quoted_cells_and_crlf(tmp_path):
    """Excel in a Spanish (French, German...) locale separates with ``;``: several phones
    in one cell then come quoted."""
    path = write_csv(
        tmp_path / "export.csv",
        [
            HEADER.replace(",", ";"),
            'Contacts;C-1;"Ruiz; Marta";"+34 928 000 010;+34 600 000 010";u1;"García, Ana";ana@example.com;"101;201";',
            "Leads;L-2;Costa;928000011;u2;Ben;ben@example.com;102;open",
        ],
        bom=True,
        newline="\r\n",
    )
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert "imported 2 record(s), 3 phone(s), 2 user(s)" in result.stdout
    assert contents(db)["records"] == [("Contacts", "C-1", "Ruiz; Marta"), ("Leads", "L-2", "Costa")]
    assert owner_of(db, "+34600000010") == ("C-1", ("101", "201"))


def test_a_byte_that_is_not_utf8_is_reported_on_its_own_line(tmp_path):
    lines = [HEADER] + [f"Contacts,C-{i},Name {i},+3492800010{i},,,,," for i in range(5)] + ["Contacts,C-9,Jos\xe9,+34928000199,,,,,"]
    path = write_csv(tmp_path / "cp1252.csv", lines, encoding="cp1252")
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 1
    assert f"{path}:7: not UTF-8 text (byte 0xe9" in result.output and "CSV UTF-8" in result.output
    assert contents(db)["records"] == []


# -- extensions are checked as the router checks them ------------------------------------


@pytest.mark.parametrize("cell", ["10 1", "101,102", "PJSIP/101", "101&102"])
def test_an_extension_the_router_would_never_dial_is_a_bad_row(tmp_path, cell):
    path = write_csv(tmp_path / "x.csv", [HEADER, f'Contacts,C-1,A,+34928000020,u1,Ana,a@x.es,"{cell}",'])
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 1
    assert f"{path}:2: extension " in result.output and "separated by ;" in result.output
    assert contents(db) == {"users": [], "records": [], "phones": []}


def test_extensions_follow_the_configured_pattern(tmp_path):
    config = tmp_path / "three.toml"
    config.write_text('[routing]\ndefault_region = "ES"\nextension_pattern = "[0-9]{3}"\n')
    path = write_csv(tmp_path / "x.csv", [HEADER, "Contacts,C-1,A,+34928000021,u1,Ana,a@x.es,101;12,"])
    result, _ = run_import(tmp_path, path, config=str(config))
    assert result.exit_code == 1 and "extension '12' is not an extension" in result.output
    users = write_csv(tmp_path / "users.csv", ["id,name,email,extensions", "u1,Ana,a@x.es,101;102", "u2,Ben,b@x.es,10 2"])
    result, _ = run_import(tmp_path, users, config=str(config))
    assert result.exit_code == 1 and f"{users}:3: extension '10 2'" in result.output


# -- a record once, and the summary counts what was written ----------------------------------


def test_a_record_given_twice_is_a_bad_row_naming_both_lines(tmp_path):
    path = write_csv(tmp_path / "x.csv", [HEADER, "Contacts,C-1,Old,+34928000030,,,,,", "Contacts,C-2,Other,+34928000031,,,,,", "Contacts,C-1,New,+34928000032,,,,,"])
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 1
    assert f"{path}:4: Contacts C-1 is also on line 2" in result.output
    assert contents(db)["records"] == []
    skipped, db = run_import(tmp_path, path, "--skip-invalid")
    assert skipped.exit_code == 0, skipped.output
    assert "imported 2 record(s), 2 phone(s)" in skipped.stdout and "left out 1 bad row(s)" in skipped.stdout
    assert contents(db)["records"] == [("Contacts", "C-1", "Old"), ("Contacts", "C-2", "Other")]
    assert owner_of(db, "+34928000032") is None


def test_the_phone_count_is_of_numbers_written(tmp_path):
    # The same number typed twice in one cell is one phone.
    path = write_csv(tmp_path / "x.csv", [HEADER, 'Contacts,C-1,A,"+34928000033;928 000 033",,,,,'])
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 0 and "imported 1 record(s), 1 phone(s)" in result.stdout


# -- hard to operate no more ---------------------------------------------------------------


def test_records_without_a_phone_are_skipped_and_counted_not_fatal(tmp_path):
    path = write_csv(tmp_path / "x.csv", [HEADER, "Contacts,C-1,A,+34928000040,,,,,", "Contacts,C-2,No phone,,,,,,", "Accounts,A-3,Also none, ,,,,,"])
    result, db = run_import(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert "imported 1 record(s)" in result.stdout
    assert "skipped 2 record(s) without a phone number (line 3, 4)" in result.stdout


def test_skip_invalid_imports_the_good_rows_and_lists_the_bad(tmp_path):
    path = write_csv(tmp_path / "x.csv", [HEADER, "Contacts,C-1,A,+34928000050,,,,,", "Gadgets,G-1,B,+34928000051,,,,,", "Contacts,C-2,C,12ab,,,,,", "Contacts,C-3,D,+34928000053,u3,Dev,d@x.es,103,"])
    result, db = run_import(tmp_path, path, "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert f"{path}:3: module 'Gadgets'" in result.stderr and f"{path}:4: phone '12ab'" in result.stderr
    assert "imported 2 record(s)" in result.stdout and "left out 2 bad row(s)" in result.stdout
    assert [r[1] for r in contents(db)["records"]] == ["C-1", "C-3"]


def test_a_hopeless_file_says_where_reading_stopped(tmp_path):
    rows = [f"Widgets,W-{i},x,+34928000000,,,,," for i in range(200)]
    path = write_csv(tmp_path / "x.csv", [HEADER, *rows])
    result, _ = run_import(tmp_path, path)
    assert result.exit_code == 1
    assert "reading stopped at line 51, after 50 bad rows" in result.output and "unchecked" in result.output
    skipped, db = run_import(tmp_path, path, "--skip-invalid")
    assert "left out 200 bad row(s) (the first 50 listed)" in skipped.stdout


def test_dry_run_checks_everything_and_writes_nothing(tmp_path):
    path = write_csv(tmp_path / "x.csv", [HEADER, "Contacts,C-1,A,+34928000060,u1,Ana,a@x.es,101,"])
    result, db = run_import(tmp_path, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would import 1 record(s), 1 phone(s), 1 user(s)" in result.stdout and "dry run: nothing written" in result.stdout
    assert contents(db) == {"users": [], "records": [], "phones": []}
    bad = write_csv(tmp_path / "bad.csv", [HEADER, "Contacts,C-1,A,12ab,,,,,"])
    assert run_import(tmp_path, bad, "--dry-run")[0].exit_code == 1


def test_replace_keeps_the_leads_crmroute_created_from_calls(tmp_path):
    first = write_csv(tmp_path / "a.csv", [HEADER, "Contacts,C-1,A,+34928000070,u1,Ana,a@x.es,101,", "Contacts,C-2,B,+34928000071,u2,Ben,b@x.es,102,"])
    result, db = run_import(tmp_path, first)
    assert result.exit_code == 0
    store = LocalDirectory(open_connection(db), str(db))
    writer = LocalDirectoryWriter(store)
    lead = LeadEntry(key="1700000000.9", name="Caller +34928000079", phone="+34928000079", description="from a missed call", owner_id="u2")
    (written,) = asyncio.run(writer.create(WriteKind.LEAD, [lead]))
    assert written.ok
    asyncio.run(store.aclose())
    second = write_csv(tmp_path / "b.csv", [HEADER, "Contacts,C-3,C,+34928000072,u3,Carla,c@x.es,103,"])
    result, db = run_import(tmp_path, second, "--replace")
    assert result.exit_code == 0, result.output
    assert "kept 1 lead(s) crmroute created from calls" in result.stdout
    assert [r[1] for r in contents(db)["records"]] == ["C-3", "L-1700000000.9"]
    assert owner_of(db, "+34928000079") == ("L-1700000000.9", ("102",))  # its owner stays too
    assert owner_of(db, "+34928000070") is None


def test_a_directory_from_before_the_origin_column_still_imports(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', email TEXT NOT NULL DEFAULT '', extensions TEXT NOT NULL DEFAULT '');"
        "CREATE TABLE records (module TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', owner_id TEXT, is_open INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (module, id));"
        "CREATE TABLE phones (e164 TEXT NOT NULL, module TEXT NOT NULL, record_id TEXT NOT NULL, raw TEXT NOT NULL, PRIMARY KEY (e164, module, record_id)) WITHOUT ROWID;"
        "INSERT INTO records VALUES ('Contacts', 'C-0', 'Old', NULL, 1);"
    )
    conn.commit()
    conn.close()
    path = write_csv(tmp_path / "x.csv", [HEADER, "Contacts,C-1,A,+34928000080,,,,,"])
    result = CliRunner().invoke(cli, ["directory", "import", path, "--path", str(db), "--replace"], env={"CRMROUTE_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert [r[1] for r in contents(db)["records"]] == ["C-1"]
    assert owner_of(db, "+34928000080") == ("C-1", ())
