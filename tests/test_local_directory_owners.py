"""Lookups in the local directory share one Owner object per owner (memory for a
cache of many numbers), and never serve an owner that changed."""

import io

from crmlookup.local_directory import LocalDirectory
from crmlookup.local_directory.directory import open_connection
from crmlookup.phone import normalise

CSV = """module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status
Leads,L-1,Marta Ruiz,+34928000001,u1,Ana García,ana@example.com,101,open
Contacts,C-2,Pedro Sanz,+34928000002,u1,Ana García,ana@example.com,101,open
"""
MODULES = ("Leads", "Deals", "Contacts", "Accounts")


def test_records_of_one_owner_share_the_owner(tmp_path):
    directory = LocalDirectory(open_connection(tmp_path / "d.sqlite", create=True), "test")
    try:
        directory.import_csv(io.StringIO(CSV), "ES")
        first = directory.lookup_sync(normalise("+34928000001", "ES"), MODULES).best
        second = directory.lookup_sync(normalise("+34928000002", "ES"), MODULES).best
        assert first.owner is second.owner
        assert first.owner.extensions == ("101",)
        # The owner is renamed and given another extension: the next lookup says so.
        changed = CSV.replace("Ana García,ana@example.com,101", "Ana García-López,ana@example.com,201")
        directory.import_csv(io.StringIO(changed), "ES", replace=True)
        again = directory.lookup_sync(normalise("+34928000001", "ES"), MODULES).best
        assert (again.owner.name, again.owner.extensions) == ("Ana García-López", ("201",))
    finally:
        directory.close()
