"""The two halves meet: an outcome recorded over FastAGI is what the
LastAgent rule reads on the caller's next call."""

import time

from asterisk_peer import AsteriskPeer, answered_call_channel, asterisk_headers, route_call
from conftest import agi_server, make_config, run


def test_the_agent_who_answered_last_rings_next_time(tmp_path):
    config = make_config(
        {
            "routing": {
                "default_region": "ES",
                "lookup_order": ["LastAgent", "Leads", "Deals", "Contacts", "Accounts"],
                "check_availability": False,
            },
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        }
    )
    channel = answered_call_channel(time.time() - 60)
    channel["DIALEDPEERNUMBER"] = "105"  # Eva took the call, not the lead's owner Ana

    async def scenario():
        async with agi_server(config) as server:
            first = await route_call(server.port, caller="+34928000000", uniqueid="1700000000.1")
            await AsteriskPeer(channel_variables=channel).call(
                server.port, asterisk_headers(script="outcome", caller="+34928000000", uniqueid="1700000000.1")
            )
            second = await route_call(server.port, caller="+34928000000", uniqueid="1700000100.1")
            return first.variables, second.variables

    first, second = run(scenario())
    assert (first["CRM_ROUTE_STATUS"], first["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
    assert (second["CRM_ROUTE_STATUS"], second["CRM_TARGET"]) == ("OWNER", "PJSIP/105")
    assert "last agent" in second["CRM_ROUTE_REASON"]
