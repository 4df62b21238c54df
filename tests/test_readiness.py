"""``/readyz`` of a real ``crmroute serve``: unready while its outbox cannot take a commit, ready
again once it can. The outbox is made unwritable the way a full disk makes it: the server's
file size limit (RLIMIT_FSIZE) set to nothing while it runs, which binds root too."""

from __future__ import annotations

import re
import resource
import signal
import socket
import time

from asterisk_peer import AsteriskPeer, asterisk_headers, header_block
from conftest import run
from metrics_scrape import readiness
from serve_process import ServeProcess

METRICS_LINE = re.compile(r"metrics and health on (http://127\.0\.0\.1:\d+)")


def write_config(tmp_path, extra: str = "") -> object:
    path = tmp_path / "crmroute.toml"
    path.write_text(
        '[routing]\ndefault_region = "ES"\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n' + extra
    )
    return path


def wait_ready(base: str, want: bool, timeout: float = 30.0) -> dict:
    """Poll /readyz until it says ``want`` (the delivery worker opens the outbox soon after the start)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = readiness(base)
        if body["ready"] is want:
            assert status == (200 if want else 503)
            return body
        assert time.monotonic() < deadline, f"readiness stayed {body}"
        time.sleep(0.05)


def route(port: int) -> str:
    return run(AsteriskPeer().call(port, asterisk_headers())).variables.get("CRM_ROUTE_STATUS", "")


def test_readyz_follows_whether_the_outbox_takes_commits(tmp_path):
    with ServeProcess(write_config(tmp_path)) as serve:
        base = serve.wait_for(METRICS_LINE).group(1)
        ready = wait_ready(base, True)
        assert ready["checks"]["outbox"]["ok"] and ready["problems"] == []
        pid = serve.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
        try:
            unready = wait_ready(base, False)
            assert len(unready["problems"]) == 1 and unready["problems"][0].startswith("outbox: ")
            assert "cannot commit" in unready["checks"]["outbox"]["detail"]
            serve.wait_for(r" ERROR crmroute\.outbox: outbox not usable: outbox .* cannot commit")
            assert route(serve.port) == "OWNER"  # routing never waits for the outbox
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        again = wait_ready(base, True)
        assert again["checks"]["outbox"]["ok"]
        serve.wait_for(r" WARNING crmroute\.outbox: outbox .*: commits work again after \d+ s")
        assert len(re.findall("outbox not usable", serve.log)) == 1  # said once, however often it was probed


def test_readyz_says_stopping_while_the_server_shuts_down(tmp_path):
    with ServeProcess(write_config(tmp_path, '[server]\nshutdown_grace_ms = 20000\n[limits]\nreply_timeout_ms = 20000\nsession_timeout_ms = 30000\n')) as serve:
        base = serve.wait_for(METRICS_LINE).group(1)
        wait_ready(base, True)
        # A call whose channel never answers the server's command: the shutdown waits for it.
        call = socket.create_connection(("127.0.0.1", serve.port))
        try:
            call.sendall(header_block(asterisk_headers()))
            assert call.recv(4096)  # the server's first command: the session is in flight
            serve.send(signal.SIGTERM)
            serve.wait_for("shutting down: waiting up to 20000 ms for 1 session")
            stopping = wait_ready(base, False)
            assert stopping["problems"] == ["listening: stopping"]
        finally:
            call.close()
        assert serve.stop() == 0
