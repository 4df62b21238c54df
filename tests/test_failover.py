"""Several routers behind ``hagi://``: two real ``crmroute serve`` processes, one killed.

The PBX is the project's Asterisk model running ``extensions.conf.sample``
with ``CRM_AGI=hagi://routers.test``: it looks up the SRV records and tries
the routers in priority order, moving on only when a connection is refused,
as ``res_agi.c`` does. The routers are real processes on loopback; one is
killed with SIGKILL (between calls, and in the middle of a route), and the
next sessions must land on the other, with every call routed and its outcome
recorded.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from asterisk_dialplan import Channel, Dialplan, Pbx
from asterisk_peer import AsteriskPeer
from conftest import run
from dialplan.outbox import Outbox
from serve_process import ServeProcess
from test_sample_dialplan import QUEUES, SALES_DID, SAMPLE, answered_by, queue_names

SRV_NAME = "routers.test"
KNOWN = "+34928000000"  # the demo's open lead of Ana, 101


def router_config(tmp_path: Path, name: str) -> tuple[Path, Path]:
    outbox = tmp_path / f"{name}-outbox.sqlite"
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{outbox}"\n'
        f'[routing.policies.sales]\ndids = ["+{SALES_DID}"]\n'
    )
    return path, outbox


def call_ids(outbox: Path) -> set[str]:
    if not outbox.exists():
        return set()
    box = Outbox.open(outbox, create=False)
    try:
        return {row.call_id for row in box.list_rows(limit=1000)}  # delivered ones too
    finally:
        box.close()


def pbx_for(first: int, second: int, **options) -> Pbx:
    srv = {f"_agi._tcp.{SRV_NAME}": [(10, 0, "127.0.0.1", first), (20, 0, "127.0.0.1", second)]}
    return Pbx(
        Dialplan.parse(SAMPLE), globals={"CRM_AGI": f"hagi://{SRV_NAME}", "CRM_RECORD": "no"}, srv=srv,
        dial=answered_by("101"), queues=queue_names(QUEUES), **options,
    )


def call(pbx: Pbx, uniqueid: str) -> Channel:
    return run(pbx.call("from-trunk", SALES_DID, Channel(caller=KNOWN, dnid=SALES_DID, uniqueid=uniqueid)))


def test_sessions_go_to_the_first_router_and_to_the_next_once_it_is_killed(tmp_path):
    config_a, outbox_a = router_config(tmp_path, "a")
    config_b, outbox_b = router_config(tmp_path, "b")
    with ServeProcess(config_a) as a, ServeProcess(config_b) as b:
        pbx = pbx_for(a.port, b.port)
        before = [call(pbx, f"1700000000.{i}") for i in range(3)]
        for channel in before:
            assert channel.sessions == [("route", a.port), ("outcome", a.port)]
            assert channel.variables["CRM_TARGET"] == "PJSIP/101" and channel.variables["CRM_OUTCOME"] == "recorded"
        a.stop(signal.SIGKILL)
        after = [call(pbx, f"1700000001.{i}") for i in range(3)]
        for channel in after:
            assert channel.sessions == [("route", b.port), ("outcome", b.port)]
            assert channel.variables["CRM_TARGET"] == "PJSIP/101" and channel.variables["CRM_OUTCOME"] == "recorded"
            assert ("Dial", "PJSIP/101,20") in channel.ran and not channel.queues_joined
    assert call_ids(outbox_a) == {c.uniqueid for c in before}
    assert call_ids(outbox_b) == {c.uniqueid for c in after}


def test_a_router_killed_mid_route_the_dialplan_asks_the_next_one(tmp_path):
    config_a, outbox_a = router_config(tmp_path, "a")
    config_b, outbox_b = router_config(tmp_path, "b")
    with ServeProcess(config_a) as a, ServeProcess(config_b) as b:

        async def scenario() -> Channel:
            gate = asyncio.Event()
            peers: list[AsteriskPeer] = []
            made = asyncio.Event()

            def factory(variables: dict[str, str]) -> AsteriskPeer:
                peer = AsteriskPeer(channel_variables=variables, state_gate=gate)
                peers.append(peer)
                made.set()
                return peer

            pbx = pbx_for(a.port, b.port, peer_factory=factory)
            channel = Channel(caller=KNOWN, dnid=SALES_DID, uniqueid="1700000002.1")
            task = asyncio.ensure_future(pbx.call("from-trunk", SALES_DID, channel))
            await made.wait()
            # The router on A is asking whether 101 is free: it dies there.
            await asyncio.wait_for(peers[0].state_asked.wait(), 30)
            await asyncio.to_thread(a.stop, signal.SIGKILL)
            gate.set()
            return await asyncio.wait_for(task, 60)

        channel = run(scenario())
        routes = [agi for agi in channel.ran if agi[0] == "AGI" and "/route," in agi[1]]
        assert len(routes) == 2, "the empty CRM_ROUTE_STATUS made the dialplan ask once more"
        assert channel.sessions == [("route", a.port), ("route", b.port), ("outcome", b.port)]
        assert channel.variables["CRM_ROUTE_STATUS"] == "OWNER" and channel.variables["CRM_TARGET"] == "PJSIP/101"
        assert channel.variables["CRM_OUTCOME"] == "recorded"
    assert call_ids(outbox_b) == {"1700000002.1"} and call_ids(outbox_a) == set()


def test_an_outcome_a_dying_router_did_not_confirm_is_sent_to_the_next(tmp_path):
    """The first router routes the call (a relay to a real router) and dies in
    the outcome's session, after reading its headers and before answering,
    as a process killed at that moment does: its port refuses from then on.
    The dialplan sends the outcome once more and the next router records it."""
    config_b, outbox_b = router_config(tmp_path, "b")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def dying_router(upstream: int) -> tuple[asyncio.AbstractServer, int]:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            headers = await reader.readuntil(b"\n\n")
            if b"agi_network_script: outcome\n" in headers:
                server.close()  # the process is gone: the port refuses from now on
                writer.transport.abort()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
            up_writer.write(headers)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        server = await asyncio.start_server(session, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    with ServeProcess(config_b) as b:

        async def scenario() -> tuple[Channel, int]:
            server, port = await dying_router(b.port)
            pbx = pbx_for(port, b.port)
            channel = Channel(caller=KNOWN, dnid=SALES_DID, uniqueid="1700000003.1")
            await pbx.call("from-trunk", SALES_DID, channel)
            await server.wait_closed()
            return channel, port

        channel, port = run(scenario())
        assert channel.variables["CRM_TARGET"] == "PJSIP/101"
        assert channel.sessions == [("route", port), ("outcome", port), ("outcome", b.port)]
        assert channel.variables["CRM_OUTCOME"] == "recorded"
        assert not any("crmroute-agi" in data for _, data in channel.ran), "the classic AGI was not needed"
    assert call_ids(outbox_b) == {"1700000003.1"}
