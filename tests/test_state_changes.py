"""Trouble is logged when it starts and when it ends, at WARNING, once each: Zoho down and back
(with how long), credentials refused and accepted, the outbox stuck and delivering, the mirror
stale and fresh. Real parts: the Zoho simulator over HTTP, real outbox files, the mirror's file."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from conftest import decide, run, zoho_config
from crm_double import CrmDouble
from crmlookup.errors import CrmAuthError
from crmlookup.secrets import Secret
from crmlookup.zoho.auth import REFUSED_PAUSE_S, TokenSource
from fastagi_server.app import App
from test_delivery_worker import USERS, outcome, rig_factory  # noqa: F401  (the fixture)
from test_zoho_mirror import CALLER, Router, mirror_config, team  # noqa: F401  (the fixture)


def lines(caplog, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and re.search(pattern, r.getMessage())]


def test_zoho_down_is_told_once_and_back_with_how_long(zoho, caplog):
    owner = zoho.add_user("Ana Rep", "ana@example.com", Extension="101")
    numbers = [f"+3492800{n:04d}" for n in range(12)]
    for number in numbers:
        zoho.add_record("Contacts", owner, Full_Name="C", Last_Name="C", Phone=number)
    caplog.set_level(logging.INFO)
    config = zoho_config(zoho, zoho={"user_extension_field": "Extension", "breaker_failures": 2, "breaker_open_s": 1, "read_timeout_ms": 2000})

    async def scenario():
        app = App.from_config(config)
        try:
            first = await decide(app, numbers[0])
            zoho.stop()
            down = [await decide(app, number) for number in numbers[1:8]]
            zoho.start()  # the same port again
            for number in numbers[8:] * 50:  # until the breaker lets a request through and it is answered
                later = await decide(app, number)
                if later.status.value == "OWNER":
                    return first, down, later
                await _pause()
            raise AssertionError("Zoho never answered again")
        finally:
            await app.aclose()

    first, down, later = run(scenario())
    assert first.status.value == "OWNER" and {d.status.value for d in down} == {"ERROR"}
    [went_down] = lines(caplog, "^Zoho CRM down")
    assert "2 failures in a row" in went_down and "calls are answered from the cache and the mirror meanwhile" in went_down
    [came_back] = lines(caplog, "^Zoho CRM answers again")
    assert re.fullmatch(r"Zoho CRM answers again after \d+ s", came_back)


async def _pause():
    import asyncio

    await asyncio.sleep(0.05)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_refused_credentials_are_told_once_and_accepted_again_after_how_long(zoho, caplog):
    caplog.set_level(logging.DEBUG, logger="crmroute.zoho")
    clock = Clock()
    zoho.revoke_refresh_token()

    async def scenario():
        async with httpx.AsyncClient() as client:
            tokens = TokenSource(
                client, zoho.url, client_id=Secret(zoho.client_id), client_secret=Secret(zoho.client_secret),
                refresh_token=Secret(zoho.refresh_token), default_api_domain=zoho.url, clock=clock,
            )
            for _ in range(3):  # refused each time Zoho is asked again
                with pytest.raises(CrmAuthError):
                    await tokens.get()
                clock.now += REFUSED_PAUSE_S + 1
            zoho.refresh_token_revoked = False  # the admin fixed the token at Zoho
            token = await tokens.get()
            return tokens, token

    tokens, token = run(scenario())
    assert token.api_domain
    assert len(zoho.token_requests()) == 4
    [refused] = lines(caplog, "^Zoho refused the credentials")
    assert "invalid_code" in refused and f"asked again every {REFUSED_PAUSE_S:.0f} s" in refused
    assert lines(caplog, "^Zoho accepts the credentials again") == ["Zoho accepts the credentials again after 3 min"]
    assert tokens.stats.token_mints == 1 and tokens.stats.token_refusals == 3


def test_the_outbox_stuck_is_told_once_with_the_reason_then_delivering_again(rig_factory, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="crmroute.outbox")
    crm = CrmDouble(users_list=USERS, down=True)
    rig = rig_factory(crm)
    rig.record(outcome(1), outcome(2))
    for _ in range(3):
        rig.round()
        rig.clock.now += 100  # past the back-off
    assert rig.states() == {"1700000000.1": "failed", "1700000000.2": "failed"}
    [stuck] = lines(caplog, "^outbox stuck")
    assert "2 outcome(s) failed, first error: CrmUnavailable: connection refused" in stuck
    rounds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("outbox round:")]
    assert rounds and all("first error: CrmUnavailable: connection refused" in line for line in rounds)
    crm.down = False
    rig.flush()
    assert lines(caplog, "^outbox delivering again") == ["outbox delivering again after 5 min"]  # three rounds 100 s apart
    assert len(lines(caplog, "^cannot read the CRM's users")) == 1  # not once per round
    assert lines(caplog, "^the CRM's users are read again") == ["the CRM's users are read again after 5 min"]
    totals = rig.worker.totals
    assert (totals.delivered, totals.failed, totals.dead, totals.refused) == (2, 6, 0, 0)


def test_records_the_crm_refuses_are_counted_as_refusals(rig_factory):  # noqa: F811
    crm = CrmDouble(users_list=USERS, reject=lambda entry: "INVALID_DATA: Subject" if "Missed" in getattr(entry, "subject", "") else None)
    rig = rig_factory(crm)
    rig.record(outcome(1), outcome(2, answered_by="101"))
    rig.round()
    totals = rig.worker.totals
    assert (totals.delivered, totals.failed, totals.refused) == (1, 1, 1)


def test_the_mirror_stale_is_told_once_and_fresh_again(zoho, team, tmp_path, caplog):  # noqa: F811
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    caplog.set_level(logging.WARNING, logger="crmroute.mirror")

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path, mirror={"stale_after_s": 600})) as router:
            await router.sync()
            refresher = router.mirror.refresher
            fresh_at_first = refresher.check_freshness()
            router.mirror.status.refreshed_at -= 700
            stale = [refresher.check_freshness() for _ in range(3)]
            await router.sync()
            return fresh_at_first, stale, refresher.check_freshness()

    fresh_at_first, stale, fresh_again = run(scenario())
    assert fresh_at_first and stale == [False] * 3 and fresh_again
    [went_stale] = lines(caplog, "^mirror stale")
    assert "last refreshed 12 min ago" in went_stale and "calls are answered from it as it is" in went_stale
    assert len(lines(caplog, "^mirror fresh again after")) == 1
