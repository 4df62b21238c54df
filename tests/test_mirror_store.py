"""The mirror's file: records stored as the CRM gives them, looked up as the local directory is."""

import json
import os
import stat

import pytest

from crmlookup.local_directory import LocalDirectory
from crmlookup.mirror.records import MirrorRecord, MirrorUser
from crmlookup.mirror.store import MirrorStore, open_readonly
from crmlookup.phone import normalise
from crmlookup.records import Owner
from crmlookup.zoho.feed import ZohoOpenRule
from crmlookup.zoho.metadata import StageTable

ORDER = ("Leads", "Deals", "Contacts", "Accounts")
ANA = Owner("u1", "Ana García", "ana@example.com")
BEN = Owner("u2", "Ben Ruiz", "ben@example.com")
STAGES = StageTable({}, {"qualification": "open", "closed won": "closed won"})
RULE = ZohoOpenRule(frozenset({"junk lead"}), STAGES)


@pytest.fixture
def mirror(tmp_path):
    store = MirrorStore.open(tmp_path / "state" / "mirror.sqlite")
    store.renormalise("ES")
    yield store
    store.close()


def lookup(store, caller, modules=ORDER):
    index = LocalDirectory(open_readonly(store.path), "test", name="zoho", source="mirror")
    try:
        return index.lookup_sync(normalise(caller, "ES"), modules)
    finally:
        index.close()


def contact(record_id="c1", phone="928 00 00 01", owner=ANA, modified=100.0, **more):
    return MirrorRecord("Contacts", record_id, "Pedro Gil", owner, (phone,), modified, **more)


def deal(record_id="d1", parents=(("Contacts", "c1"),), stage="Qualification", owner=BEN, modified=100.0):
    return MirrorRecord("Deals", record_id, "Ampliación", owner, (), modified, stage, "", False, parents)


def test_the_file_and_its_folder_are_for_the_owner_only(mirror):
    assert stat.S_IMODE(os.stat(mirror.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(mirror.path.parent).st_mode) == 0o700


def test_a_phone_in_any_format_is_found_under_its_normalised_number(mirror):
    mirror.apply([contact(phone="+34-928-000-001")], RULE, "ES")

    result = lookup(mirror, "928000001")

    assert [(m.module, m.record_id, m.owner.name) for m in result.matches] == [("Contacts", "c1", "Ana García")]
    assert result.known and result.source == "mirror"
    assert result.steps == ["mirror: +34928000001 -> 1 open record(s) of 1 matching"]


def test_a_deal_is_reached_through_its_contact_and_its_account(mirror):
    account = MirrorRecord("Accounts", "a1", "Hotel", ANA, ("928000004",), 100.0)
    mirror.apply([contact(), account, deal(), deal("d2", parents=(("Accounts", "a1"),))], RULE, "ES")

    by_contact = lookup(mirror, "928000001")
    by_account = lookup(mirror, "928000004")

    assert [(m.module, m.record_id) for m in by_contact.matches] == [("Deals", "d1"), ("Contacts", "c1")]
    assert [(m.module, m.record_id) for m in by_account.matches] == [("Deals", "d2"), ("Accounts", "a1")]
    assert by_contact.matches[0].owner.id == "u2"
    # The deal names the caller it was reached through: the call is logged on both.
    assert (by_contact.matches[0].via_module, by_contact.matches[0].via_id, by_contact.matches[0].caller_name) == ("Contacts", "c1", "Pedro Gil")
    assert by_contact.matches[1].via_module == ""


def test_a_contact_holding_the_number_keeps_the_accounts_deals_out(mirror):
    """The CRM's rule: deals through the caller's contact, through the account only when no contact matches."""
    mirror.apply([
        contact(phone="928000001"),
        MirrorRecord("Accounts", "a1", "Hotel", ANA, ("928000001",), 100.0),
        deal("d9", parents=(("Accounts", "a1"),)),
    ], RULE, "ES")

    result = lookup(mirror, "928000001")

    assert [m.module for m in result.matches] == ["Contacts", "Accounts"]


def test_closed_leads_and_deals_do_not_match_but_the_number_is_known(mirror):
    mirror.apply([
        MirrorRecord("Leads", "l1", "Junk", ANA, ("928000002",), 100.0, "Junk Lead"),
        MirrorRecord("Leads", "l2", "Converted", ANA, ("928000002",), 100.0, "Contacted", converted=True),
        contact("c2", "928000003"),
        deal("d3", parents=(("Contacts", "c2"),), stage="Closed Won"),
    ], RULE, "ES")

    leads = lookup(mirror, "928000002")
    won = lookup(mirror, "928000003", ("Deals",))

    assert leads.matches == [] and leads.known
    assert won.matches == [] and won.known


def test_an_older_copy_never_overwrites_a_newer_one(mirror):
    mirror.apply([contact(owner=BEN, modified=200.0)], RULE, "ES")
    assert mirror.apply([contact(owner=ANA, modified=150.0)], RULE, "ES") == 0

    assert lookup(mirror, "928000001").matches[0].owner.id == "u2"


def test_a_changed_record_loses_its_old_phones_and_links(mirror):
    mirror.apply([contact(phone="928000001"), deal()], RULE, "ES")
    mirror.apply([contact(phone="928000009", modified=300.0), deal(parents=(), modified=300.0)], RULE, "ES")

    assert lookup(mirror, "928000001").known is False
    assert [m.module for m in lookup(mirror, "928000009").matches] == ["Contacts"]


def test_deleted_records_stop_matching(mirror):
    mirror.apply([contact(), deal()], RULE, "ES")

    assert mirror.delete("Contacts", ["c1", "c404"]) == 1
    assert lookup(mirror, "928000001").known is False


def test_the_users_list_names_an_owner_and_a_records_lookup_does_not_rename_them(mirror):
    mirror.apply_users([MirrorUser("u1", "Ana García", "ana@example.com", True)])
    mirror.apply([contact(owner=Owner("u1", "García", ""))], RULE, "ES")  # what a COQL lookup may carry

    assert lookup(mirror, "928000001").matches[0].owner.name == "Ana García"


def test_users_give_extensions_and_an_inactive_user_rings_nowhere(mirror):
    mirror.apply([contact()], RULE, "ES")
    mirror.apply_users([MirrorUser("u1", "Ana G.", "ana@example.com", True, ("101", "102"))])
    assert lookup(mirror, "928000001").matches[0].owner.extensions == ("101", "102")

    mirror.apply_users([MirrorUser("u1", "Ana G.", "ana@example.com", False)])
    owner = lookup(mirror, "928000001").matches[0].owner
    assert (owner.name, owner.extensions) == ("Ana G.", ())


def test_a_changed_rule_rejudges_every_lead_and_deal_without_the_crm(mirror):
    mirror.apply([MirrorRecord("Leads", "l1", "Marta", ANA, ("928000002",), 100.0, "Not Qualified")], RULE, "ES")
    mirror.rejudge(RULE)
    assert [m.module for m in lookup(mirror, "928000002").matches] == ["Leads"]

    stricter = ZohoOpenRule(frozenset({"junk lead", "not qualified"}), STAGES)
    assert mirror.rejudge(stricter) == 1
    assert lookup(mirror, "928000002").matches == []
    assert mirror.rejudge(stricter) == 0, "the same rule twice changes nothing"


def test_a_new_default_region_renormalises_every_phone(mirror):
    mirror.apply([contact(phone="020 7946 0000")], RULE, "ES")
    assert lookup(mirror, "928000001").known is False

    assert mirror.renormalise("GB") is True
    index = LocalDirectory(open_readonly(mirror.path), "test", source="mirror")
    try:
        assert index.lookup_sync(normalise("+442079460000", "GB"), ORDER).known
    finally:
        index.close()


@pytest.mark.parametrize("text", ["not a number", "", "+", "1" * 60, "928-00-0x", "☎"])
def test_text_that_is_not_a_number_is_kept_raw_but_never_indexed(mirror, text):
    mirror.apply([contact(phone=text)], RULE, "ES")

    stored = mirror.conn.execute("SELECT phones FROM record_state").fetchone()[0]
    assert json.loads(stored) == [text]
    assert mirror.conn.execute("SELECT count(*) FROM phones").fetchone()[0] == 0


def test_crm_text_with_quotes_and_newlines_is_stored_as_text(mirror):
    hostile = MirrorRecord("Contacts", "c1", "Robert'); DROP TABLE records;--\n\u2028", Owner("u1", 'Eve "x"', "e@x\r\n"), ("928000001",), 1.0)
    mirror.apply([hostile], RULE, "ES")

    match = lookup(mirror, "928000001").matches[0]
    assert match.name == hostile.name and match.owner.name == 'Eve "x"'


def test_reading_a_missing_file_is_a_clear_error(tmp_path):
    from crmlookup.mirror.store import MirrorFileError

    with pytest.raises(MirrorFileError, match="no mirror file"):
        open_readonly(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(MirrorFileError, match="cannot read"):
        open_readonly(tmp_path / "junk.sqlite")
