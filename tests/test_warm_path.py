"""What the warm path leaves out must change nothing anyone reads: a router that keeps no
--explain steps (the classic AGI's) gives the same reason and chain, and the call line's
memo of rendered fields stays bounded and renders what it always did."""

from __future__ import annotations

import asyncio

from conftest import make_config
from dialplan import FixedDeviceStates, InboundCall, RouteDecision, Router
from fastagi_server import calllog
from fastagi_server.app import App

STATES = FixedDeviceStates({"PJSIP/101": "NOT_INUSE", "PJSIP/102": "INUSE", "PJSIP/103": "NOT_INUSE"})


def _decide(explain: bool, caller: str) -> RouteDecision:
    async def decide() -> RouteDecision:
        app = App.from_config(make_config({"routing": {"default_region": "ES"}}))
        router = Router(app.config.routing, app.backend, explain=explain)
        try:
            return await router.decide(InboundCall(caller=caller, did="900"), STATES)
        finally:
            await app.aclose()

    return asyncio.run(decide())


def test_a_router_without_steps_gives_the_same_reason_and_chain() -> None:
    for caller in ("+34928000000", "928000002", "+34928000004", "928999999", "not a number"):
        explained, served = _decide(True, caller), _decide(False, caller)
        assert explained.steps and served.steps == []
        assert served.channel_variables() | {"CRM_LOOKUP_MS": ""} == explained.channel_variables() | {"CRM_LOOKUP_MS": ""}
        assert served.chain == explained.chain


def test_rendered_fields_are_bounded_and_unchanged() -> None:
    fields = {"caller": "+34928000000", "owner_name": 'Ana "García"\u2028status=OWNER', "empty": ""}
    first = calllog.format_fields(fields)
    assert first == r'caller=+34928000000 owner_name="Ana \"García\"\u2028status=OWNER"'
    for n in range(calllog._RENDERED_MAX * 2):
        calllog.format_fields({"uniqueid": f"1700000000.{n}"})
        assert len(calllog._RENDERED) <= calllog._RENDERED_MAX
    assert calllog.format_fields(fields) == first
