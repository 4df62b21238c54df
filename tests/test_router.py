"""The router's promise: a decision within the deadline, whatever the CRM does."""

import asyncio
import time

import pytest

from conftest import run
from crmlookup.errors import CrmUnavailable
from crmlookup.local_directory import LocalDirectory
from crmlookup.records import LookupResult, Match, Owner
from dialplan import InboundCall, RouteStatus, Router, RoutingSettings
from dialplan.targets import DialTargets


class ScriptedBackend:
    """A CRM that answers after ``delay`` seconds, or fails. (The real HTTP cases
    run against the Zoho simulator; this isolates the router's own promise.)"""

    name = "scripted"

    def __init__(self, delay=0.0, error=None, matches=()):
        self.delay, self.error, self.matches = delay, error, list(matches)

    async def lookup(self, number, modules):
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return LookupResult(matches=self.matches)

    async def aclose(self):
        pass


def decide(backend, caller="+34928000000", **settings):
    router = Router(RoutingSettings(default_region="ES", **settings), backend)
    return run(router.decide(InboundCall(caller=caller)))


def test_slow_crm_gives_timeout_within_the_deadline():
    started = time.perf_counter()
    decision = decide(ScriptedBackend(delay=5), deadline_ms=200)
    elapsed = time.perf_counter() - started
    assert decision.status is RouteStatus.TIMEOUT
    assert elapsed < 0.2 + 0.5  # generous for a loaded CI machine; the point is: not 5 s
    assert decision.channel_variables()["CRM_TARGET"] == ""


def test_failing_crm_gives_error():
    decision = decide(ScriptedBackend(error=CrmUnavailable("HTTP 503")))
    assert decision.status is RouteStatus.ERROR and "503" in decision.reason


@pytest.mark.parametrize("caller", ["", "anonymous", "Restricted", "x" * 100, "+", "12ab34", "\n", "☎"])
def test_unusable_caller_ids_are_nomatch_without_asking_the_crm(caller):
    backend = ScriptedBackend(error=AssertionError("must not be asked"))
    assert decide(backend, caller=caller).status is RouteStatus.NOMATCH


def test_owner_extension_map_wins_over_the_crm():
    owner = Owner("u1", "Ana", "Ana@Example.com", ("101",))
    backend = ScriptedBackend(matches=[Match("Contacts", "C-1", "X", owner)])
    assert decide(backend, owner_extensions={"ana@example.com": ("555",)}).target == "PJSIP/555"
    assert decide(backend, owner_extensions={"u1": ("556", "557")}).target == "PJSIP/556&PJSIP/557"


def test_dial_template_local_channel():
    owner = Owner("u1", "Ana", "", ("101",))
    backend = ScriptedBackend(matches=[Match("Contacts", "C-1", "X", owner)])
    assert decide(backend, dial_template="Local/{ext}@from-internal").target == "Local/101@from-internal"


@pytest.mark.parametrize(
    "template", ["PJSIP/{ext},tT", "PJSIP/{ext}&SIP/666", "{ext}", "PJSIP/{ext}{ext}", "PJSIP/101", "System(rm)/{ext}"]
)
def test_unsafe_dial_templates_are_refused(template):
    with pytest.raises(ValueError, match="dial_template"):
        RoutingSettings(dial_template=template)


@pytest.mark.parametrize(
    "extension, ok",
    [("101", True), ("sales-1", True), ("101&PJSIP/666", False), ("101,tT", False), ("1 01", False), ("", False), ("101\n", False), ("١٠١", False)],
)
def test_extension_validation(extension, ok):
    assert DialTargets("PJSIP/{ext}", r"[0-9A-Za-z_-]{1,32}").is_valid(extension) is ok


def test_admin_pattern_cannot_open_the_safe_alphabet():
    targets = DialTargets("PJSIP/{ext}", r".*")
    assert targets.dial_string(["101", "102&PJSIP/666", "103,tT"]) == "PJSIP/101"


def test_real_directory_under_router():
    router = Router(RoutingSettings(default_region="ES"), LocalDirectory.open(None))
    decision = run(router.decide(InboundCall(caller="928000002")))
    assert decision.status is RouteStatus.OWNER
    assert decision.match.module == "Deals"
    assert any("normalised to +34928000002" in step for step in decision.steps)


# -- a caller the CRM knows, by records that do not count ----------------------------------


def _directory_with(tmp_path, rows: str):
    from crmlookup.local_directory import LocalDirectory, import_csv_text, open_connection

    conn = open_connection(tmp_path / "d.sqlite", create=True)
    import_csv_text(conn, "module,id,name,phones,owner_id,status\n" + rows, "ES")
    return LocalDirectory(conn, "test")


@pytest.mark.parametrize(
    "rows, lookup_order, said",
    [
        ("Leads,L-1,Marta,+34928000100,u1,closed\n", ("Leads", "Deals", "Contacts", "Accounts"), "Leads L-1 is closed"),
        ("Deals,D-1,Renewal,+34928000100,u1,closed\n", ("Leads", "Deals"), "Deals D-1 is closed"),
        ("Contacts,C-1,Pedro,+34928000100,u1,\n", ("Leads", "Deals"), "Contacts C-1 (Contacts is not in the lookup order)"),
    ],
)
def test_a_caller_known_only_by_records_that_do_not_count_is_not_called_unknown(tmp_path, rows, lookup_order, said):
    directory = _directory_with(tmp_path, rows)

    async def scenario():
        router = Router(RoutingSettings(default_region="ES", lookup_order=lookup_order), directory)
        try:
            return await router.decide(InboundCall(caller="+34928000100"))
        finally:
            await directory.aclose()

    decision = asyncio.run(scenario())
    assert decision.status.value == "NOMATCH"
    assert "caller not in the CRM" not in decision.reason
    assert decision.reason == f"no open record of the caller: {said}"
    assert any("not counted" in step and said in step for step in decision.steps)


def test_the_reason_still_says_not_in_the_crm_when_nothing_matched(tmp_path):
    directory = _directory_with(tmp_path, "Leads,L-1,Marta,+34928000100,u1,open\n")

    async def scenario():
        try:
            return await Router(RoutingSettings(default_region="ES"), directory).decide(InboundCall(caller="+34928000999"))
        finally:
            await directory.aclose()

    assert asyncio.run(scenario()).reason == "caller not in the CRM"
