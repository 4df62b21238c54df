"""``/metrics`` over real HTTP while calls are routed: the counters move as the calls did.

A real FastAGI server with its metrics listener on loopback, Asterisk-like
peers over TCP, the Zoho simulator as the CRM, a real outbox file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import threading
from pathlib import Path

from asterisk_peer import AsteriskPeer, answered_call_channel, asterisk_headers, route_call
from conftest import agi_server, make_config, run, zoho_config
from fastagi_server.config import MetricsSettings
from metrics_scrape import exported_names, get, readiness, scrape, total, value

KNOWN = "+34928000001"
OTHER_KNOWN = "+34928000002"
UNKNOWN = "+34928999999"


def with_metrics(config, **settings):
    return dataclasses.replace(config, metrics=MetricsSettings(listen="127.0.0.1:0", **settings))


def test_counters_move_as_the_calls_did(zoho):
    owner = zoho.add_user("Ana Rep", "ana@example.com", Extension="101")
    zoho.add_record("Contacts", owner, Full_Name="Pedro Gil", Last_Name="Gil", Phone=KNOWN)
    zoho.add_record("Contacts", owner, Full_Name="Lucía Romero", Last_Name="Romero", Phone=OTHER_KNOWN)
    config = with_metrics(zoho_config(zoho, zoho={"user_extension_field": "Extension"}))
    scrapes: list[dict] = []

    async def scenario():
        async with agi_server(config) as server:
            base = server.monitor.url
            before = await asyncio.to_thread(scrape, base)
            stop = threading.Event()

            def keep_scraping():  # Prometheus does not wait for a quiet moment
                while not stop.is_set():
                    scrapes.append(scrape(base))

            scraper = threading.Thread(target=keep_scraping)
            scraper.start()
            try:
                statuses = [
                    (await route_call(server.port, caller=caller)).variables["CRM_ROUTE_STATUS"]
                    for caller in (KNOWN, OTHER_KNOWN, UNKNOWN, KNOWN)
                ]
                peer = AsteriskPeer(channel_variables=answered_call_channel(0.0))
                outcome = await peer.call(server.port, asterisk_headers(script="outcome", caller=KNOWN, uniqueid="1700000000.7", extension="s", arguments=("900",)))
            finally:
                stop.set()
                await asyncio.to_thread(scraper.join)
            after = await asyncio.to_thread(scrape, base)
            return before, after, statuses, outcome.variables.get("CRM_OUTCOME")

    before, after, statuses, recorded = run(scenario())
    assert statuses == ["OWNER", "OWNER", "NOMATCH", "OWNER"]
    assert recorded == "recorded"

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("crmroute_calls_total", script="route", policy="default", status="OWNER") == 3
    assert moved("crmroute_calls_total", script="route", policy="default", status="NOMATCH") == 1
    assert moved("crmroute_calls_total", script="outcome", policy="", status="recorded") == 1
    assert moved("crmroute_decision_seconds_count") == 4
    assert moved("crmroute_decision_seconds_bucket", le="2.0") == 4
    # The second call from KNOWN is answered from the cache; the three others asked Zoho.
    assert moved("crmroute_lookups_total", source="cache") == 1
    assert moved("crmroute_lookups_total", source="live") == 3
    # Every request Zoho saw (searches, metadata, the token) is counted, by what it was for.
    assert total(after, "crmroute_crm_requests_total", backend="zoho") == len(zoho.log)
    assert total(after, "crmroute_crm_requests_total", backend="zoho", operation="lookup", result="ok") >= 3
    assert value(after, "crmroute_crm_requests_total", backend="zoho", operation="token", result="ok") == len(zoho.token_requests())
    assert value(after, "crmroute_token_mints_total", backend="zoho") == len(zoho.tokens_issued) == 1
    assert total(after, "crmroute_crm_request_seconds_count", backend="zoho") == len(zoho.log)
    assert value(after, "crmroute_outbox_outcomes", state="pending") + value(after, "crmroute_outbox_outcomes", state="done") == 1
    assert value(after, "crmroute_sessions_in_flight") == 0
    assert value(after, "crmroute_build_info", version=_version(after), commit=_commit(after), source=_source(after)) == 1
    # Scraped while the calls ran: no counter ever went back.
    series = [before, *scrapes, after]
    for earlier, later in zip(series, series[1:]):
        assert value(later, "crmroute_calls_total", script="route", policy="default", status="OWNER") >= value(
            earlier, "crmroute_calls_total", script="route", policy="default", status="OWNER")


def _build_label(samples, label):
    return next(dict(labels)[label] for name, labels in samples if name == "crmroute_build_info")


def _version(samples):
    return _build_label(samples, "version")


def _commit(samples):
    return _build_label(samples, "commit")


def _source(samples):
    return _build_label(samples, "source")


def test_labels_stay_bounded_whatever_scripts_peers_ask_for():
    async def scenario():
        async with agi_server(with_metrics(make_config())) as server:
            for n in range(5):
                await route_call(server.port, script=f"probe-{n}")
            return await asyncio.to_thread(scrape, server.monitor.url)

    samples = run(scenario())
    scripts = {dict(labels).get("script") for name, labels in samples if name == "crmroute_calls_total"}
    assert scripts == {"other"}
    assert value(samples, "crmroute_calls_total", script="other", policy="other", status="other") == 5


def test_limits_and_refused_peers_are_counted():
    config = with_metrics(make_config({"limits": {"header_timeout_ms": 50}, "server": {"allowed_peers": ["127.0.0.1/32"]}}))

    async def scenario():
        async with agi_server(config) as server:
            for source in ("127.0.0.1", "127.0.0.2"):  # silent, then not allowed: both closed by the server
                silent = socket.create_connection(("127.0.0.1", server.port), source_address=(source, 0))
                try:
                    await asyncio.to_thread(silent.recv, 1)
                finally:
                    silent.close()
            return await asyncio.to_thread(scrape, server.monitor.url)

    samples = run(scenario())
    assert value(samples, "crmroute_limits_hit_total", limit="header_timeout_ms") == 1
    assert value(samples, "crmroute_peers_refused_total", listener="agi") == 1
    assert value(samples, "crmroute_peers_refused_total", listener="metrics") == 0


def test_a_peer_outside_the_allow_list_gets_no_metrics():
    config = with_metrics(make_config(), allowed_peers=("192.0.2.0/24",))

    async def scenario():
        async with agi_server(config) as server:
            status = await asyncio.to_thread(_status_or_reset, server.monitor.url + "/metrics")
            return status, server.refused_on_monitor.count

    status, refused = run(scenario())
    assert status == "reset"
    assert refused == 1


def _status_or_reset(url):
    try:
        return get(url)[0]
    except OSError:  # the connection is closed before any answer
        return "reset"


def test_health_and_readiness_answer_json_and_unknown_paths_404():
    async def scenario():
        async with agi_server(with_metrics(make_config())) as server:
            base = server.monitor.url
            return await asyncio.to_thread(lambda: (get(base + "/healthz"), readiness(base), get(base + "/nothing")))

    (health_status, _, health_body), (ready_status, ready), (missing, _, _) = run(scenario())
    assert health_status == 200 and '"alive": true' in health_body
    # An in-process server without the delivery worker has not opened its outbox: not ready, and says why.
    assert ready_status == 503 and ready["ready"] is False
    assert ready["problems"] == ["outbox: not opened yet"]
    assert ready["checks"]["listening"]["ok"] and ready["checks"]["backend"]["ok"]
    assert missing == 404


def test_metrics_off_when_listen_is_empty():
    async def scenario():
        async with agi_server(make_config()) as server:
            return server.monitor, server.metrics

    assert run(scenario()) == (None, None)


def test_the_mirror_is_not_ready_until_its_first_load_then_its_age_and_size_show(zoho, tmp_path):
    from fastagi_server.app import App
    from test_zoho_mirror import mirror_config
    from zoho_simulator import Stall

    owner = zoho.add_user("Ana Rep", "ana@example.com", Extension="101")
    for n in range(30):
        zoho.add_record("Contacts", owner, Full_Name=f"C{n}", Last_Name="C", Phone=f"+349280{n:05d}")
    zoho.stall = stall = Stall(r"/Contacts$")  # the first load waits until the test lets it go
    config = with_metrics(mirror_config(zoho, tmp_path))

    async def scenario():
        async with agi_server(app=App.from_config(config, serving=True)) as server:
            base = server.monitor.url
            status, loading = await asyncio.to_thread(readiness, base)
            stall.release_taking_turns()
            for _ in range(600):
                status_after, ready = await asyncio.to_thread(readiness, base)
                if ready["checks"]["mirror"]["ok"]:
                    break
                await asyncio.sleep(0.05)
            return status, loading, ready, await asyncio.to_thread(scrape, base), await asyncio.to_thread(exported_names, base)

    status, loading, ready, samples, names = run(scenario())
    _documented_as_exported(names)
    assert status == 503 and not loading["checks"]["mirror"]["ok"]
    assert "first load is not done" in loading["checks"]["mirror"]["detail"]
    assert ready["checks"]["mirror"] == {"ok": True, "detail": "first load done"}
    assert value(samples, "crmroute_mirror_ready") == 1
    assert value(samples, "crmroute_mirror_records", module="Contacts") == 30
    assert 0 <= value(samples, "crmroute_mirror_age_seconds") < 60
    assert value(samples, "crmroute_mirror_file_bytes") > 0
    assert total(samples, "crmroute_crm_requests_total", backend="zoho", operation="mirror") >= 1


def _documented_as_exported(names: set[str]) -> None:
    """docs/operations.md lists every metric a server with Zoho and the mirror exports, no more,
    and its sample alert rules (the same as contrib/prometheus/) name only those."""
    root = Path(__file__).parent.parent
    doc = (root / "docs" / "operations.md").read_text()
    assert set(re.findall(r"^\| `(crmroute_[a-z_]+)` \|", doc, re.M)) == names
    rules = (root / "contrib" / "prometheus" / "crmroute-alerts.yml").read_text()
    assert rules.split("groups:", 1)[1] in doc
    for name in set(re.findall(r"crmroute_[a-z_]+", rules)):
        assert name.removesuffix("_bucket") in names, name


def test_hostile_http_peers_get_an_error_and_never_block_the_listener():
    async def scenario():
        async with agi_server(with_metrics(make_config())) as server:
            host, port = server.monitor.server_address[:2]
            base = server.monitor.url

            def exchange(data: bytes) -> bytes:
                with socket.create_connection((host, port)) as peer:
                    peer.sendall(data)
                    return peer.recv(200)

            def hostile():
                silent = socket.create_connection((host, port))  # connects and never speaks, held open meanwhile
                try:
                    return [
                        exchange(b"\x00\xff\xfeGARBAGE\r\n\r\n"),
                        exchange(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"),
                        exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
                        exchange(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"),
                        get(base + "/healthz")[0],
                        get(base + "/metrics?name[]=crmroute_calls_total")[0],
                    ]
                finally:
                    silent.close()

            return await asyncio.to_thread(hostile)

    garbage, too_long, post, traversal, healthz, with_query = run(scenario())
    assert b"Error code: 400" in garbage  # no HTTP version sent: the answer has none either
    assert too_long.startswith(b"HTTP/1.0 414")
    assert post.startswith(b"HTTP/1.0 501")
    assert traversal.startswith(b"HTTP/1.0 404")
    assert healthz == 200 and with_query == 200


def test_a_metrics_port_already_taken_stops_serve_with_one_line(tmp_path):
    from serve_process import ServeProcess

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    config = tmp_path / "crmroute.toml"
    config.write_text(f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        with ServeProcess(config, wait=False) as serve:
            assert serve.proc.wait(30) == 1
            serve.wait_for(rf"Error: .*metrics\.listen 127\.0\.0\.1:{port}: Address already in use")
            assert "Traceback" not in serve.log
    finally:
        taken.close()
