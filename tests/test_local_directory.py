"""The local directory: CSV import (all or nothing) and lookups on a real SQLite file."""

import io

import pytest

from crmlookup.errors import DirectoryError, DirectoryImportError
from crmlookup.local_directory import LocalDirectory, import_csv_text
from crmlookup.local_directory.directory import open_connection
from crmlookup.phone import normalise

ORDER = ["Leads", "Deals", "Contacts", "Accounts"]
HEADER = "module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status\n"


@pytest.fixture
def directory(tmp_path):
    conn = open_connection(tmp_path / "dir.sqlite", create=True)
    store = LocalDirectory(conn, "test")
    yield store
    store.close()


def lookup(store, number, region="ES", order=ORDER):
    return store.lookup_sync(normalise(number, region), order)


def test_numbers_in_any_typed_format_meet_on_e164(directory):
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A,928 00 00 00;+34-928-000-001;0034928000002,u1,Ana,a@x.es,101,\n"), "ES")
    for caller in ("+34928000000", "928000000", "0034928000001", "+34 928 000 002"):
        assert [m.record_id for m in lookup(directory, caller).matches] == ["C-1"], caller


def test_order_and_closed_records(directory):
    directory.import_csv(
        io.StringIO(
            HEADER
            + "Accounts,A-1,Acme,+34928000000,u4,D,d@x.es,104,\n"
            + "Contacts,C-1,Pepa,+34928000000,u3,C,c@x.es,103,\n"
            + "Deals,D-1,Deal,+34928000000,u2,B,b@x.es,102,closed\n"
            + "Leads,L-1,Lead,+34928000000,u1,A,a@x.es,101,closed\n"
        ),
        "ES",
    )
    assert [m.module for m in lookup(directory, "+34928000000").matches] == ["Contacts", "Accounts"]
    assert [m.module for m in lookup(directory, "+34928000000", order=["Accounts", "Contacts"]).matches] == ["Accounts", "Contacts"]


def test_bad_rows_refuse_the_whole_file_with_line_numbers(directory):
    bad = (
        HEADER
        + "Contacts,C-1,Good,+34928000000,u1,A,a@x.es,101,\n"
        + "Widgets,W-1,Nope,+34928000001,,,,,\n"
        + "Contacts,,No id,+34928000002,,,,,\n"
        + "Contacts,C-3,Bad phone,not-a-phone,,,,,\n"
        + "Contacts,C-4,No phone,,,,,,\n"
        + "Leads,L-1,Status,+34928000003,,,,,maybe\n"
        + 'Contacts,C-5,"multi\nline",+34928000004,,,,,\n'
        + "Contacts,C-6,Bad too,+34928000005,u6,X,x@x.es,1,\n"
        + "Contacts,C-7," + "x" * 400 + ",+34928000006,,,,,\n"
    )
    with pytest.raises(DirectoryImportError) as refused:
        directory.import_csv(io.StringIO(bad), "ES")
    problems = dict(refused.value.problems)
    # Line 6, a record without a phone, is not a bad row: it is skipped (nothing could route to it).
    assert set(problems) == {3, 4, 5, 7, 11}
    assert "Widgets" in problems[3] and "id is empty" in problems[4] and "not-a-phone" in problems[5]
    assert "maybe" in problems[7] and "longer than" in problems[11]
    assert directory.counts() == {"users": 0, "records": 0, "phones": 0}


def test_nul_bytes_and_bad_headers(directory):
    with pytest.raises(DirectoryImportError, match="NUL|unreadable"):
        directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A\x00B,+34928000000,,,,,\n"), "ES")
    with pytest.raises(DirectoryImportError, match="header"):
        directory.import_csv(io.StringIO("a,b,c\n1,2,3\n"), "ES")
    with pytest.raises(DirectoryImportError, match="empty"):
        directory.import_csv(io.StringIO(""), "ES")


def test_reimport_replaces_a_records_phones(directory):
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A,+34928000000,u1,A,a@x.es,101,\n"), "ES")
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A,+34928000009,u1,,,,\n"), "ES")
    assert lookup(directory, "+34928000000").matches == []
    match = lookup(directory, "+34928000009").best
    # Empty owner cells keep what the user had.
    assert match.owner.email == "a@x.es" and match.owner.extensions == ("101",)


def test_users_csv_sets_extensions(directory):
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A,+34928000000,u1,Ana,,,\n"), "ES")
    directory.import_csv(io.StringIO("id,name,email,extensions\nu1,,ana@x.es,101;201\n"), "ES")
    owner = lookup(directory, "+34928000000").best.owner
    assert (owner.name, owner.email, owner.extensions) == ("Ana", "ana@x.es", ("101", "201"))


def test_replace_empties_first(directory):
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A,+34928000000,,,,,\n"), "ES")
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-2,B,+34928000001,,,,,\n"), "ES", replace=True)
    assert directory.counts()["records"] == 1


def test_unowned_record(directory):
    directory.import_csv(io.StringIO(HEADER + "Contacts,C-1,A,+34928000000,,,,,\n"), "ES")
    assert lookup(directory, "+34928000000").best.owner is None


def test_opening_something_that_is_not_a_directory(tmp_path):
    with pytest.raises(DirectoryError, match="not found"):
        LocalDirectory.open(tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DirectoryError):
        LocalDirectory.open(junk)
    import sqlite3

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(DirectoryError, match="not a crmroute directory"):
        LocalDirectory.open(other)


def test_demo_directory_is_packaged():
    demo = LocalDirectory.open(None)
    assert demo.counts()["records"] >= 5
    assert lookup(demo, "+34928000000").best.owner.extensions == ("101",)
    demo.close()


def test_import_text_helper(tmp_path):
    conn = open_connection(tmp_path / "d.sqlite", create=True)
    summary = import_csv_text(conn, HEADER + "Leads,L-1,A,+34928000000;+34600000000,u1,A,a@x.es,101,\n", "ES")
    assert (summary.records, summary.phones, summary.users) == (1, 2, 1)


def test_a_bad_row_after_many_staged_batches_leaves_the_directory_as_it_was(directory, monkeypatch):
    from crmlookup.local_directory import importer

    directory.import_csv(io.StringIO(HEADER + "Contacts,C-0,Before,+34928000000,u0,Ana,a@x.es,101,\n"), "ES")
    monkeypatch.setattr(importer, "STAGING_BATCH_ROWS", 3)  # several batches are written before the bad row
    rows = "".join(f"Contacts,C-{i},Row {i},+3492810{i:04d},u1,Ben,b@x.es,102,\n" for i in range(1, 11))
    with pytest.raises(DirectoryImportError) as refused:
        directory.import_csv(io.StringIO(HEADER + rows + "Contacts,C-99,Bad,not-a-phone,,,,,\n"), "ES", replace=True)
    assert [line for line, _ in refused.value.problems] == [12]
    assert directory.counts() == {"users": 1, "records": 1, "phones": 1}
    assert lookup(directory, "+34928000000").best.name == "Before"
    # Nothing staged is left over for the next import.
    summary = directory.import_csv(io.StringIO(HEADER + rows), "ES")
    assert (summary.records, summary.phones, directory.counts()["records"]) == (10, 10, 11)


def test_a_hopeless_file_stops_at_the_problem_limit(directory):
    from crmlookup.local_directory.importer import MAX_PROBLEMS_REPORTED

    rows = "".join(f"Widgets,W-{i},x,+34928000000,,,,,\n" for i in range(MAX_PROBLEMS_REPORTED * 3))
    with pytest.raises(DirectoryImportError) as refused:
        directory.import_csv(io.StringIO(HEADER + rows), "ES")
    assert len(refused.value.problems) == MAX_PROBLEMS_REPORTED
    assert refused.value.problems[0][0] == 2


def test_the_problem_limit_holds_when_one_row_has_several_bad_phones(directory):
    from crmlookup.local_directory.importer import MAX_PROBLEMS_REPORTED

    rows = "".join(f"Contacts,C-{i},x,bad-a;bad-b;bad-c,,,,,\n" for i in range(MAX_PROBLEMS_REPORTED))
    with pytest.raises(DirectoryImportError) as refused:
        directory.import_csv(io.StringIO(HEADER + rows), "ES")
    assert len(refused.value.problems) == MAX_PROBLEMS_REPORTED
