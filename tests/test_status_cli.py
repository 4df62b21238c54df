"""``crmroute status`` asks the running server (its /readyz) and prints what it says;
``crmroute --version`` names the build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve_process import ServeProcess
from fastagi_server import __version__
from fastagi_server.status_cli import readyz_url

CRMROUTE = [sys.executable, "-m", "fastagi_server"]
METRICS_LINE = re.compile(r"metrics and health on (http://127\.0\.0\.1:\d+)")


def write_config(tmp_path: Path, outbox: Path) -> Path:
    path = tmp_path / "crmroute.toml"
    path.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{outbox}"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    return path


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CRMROUTE, "status", *args], capture_output=True, text=True, timeout=60)


def test_status_of_a_ready_server(tmp_path):
    with ServeProcess(write_config(tmp_path, tmp_path / "outbox.sqlite")) as serve:
        url = serve.wait_for(METRICS_LINE).group(1) + "/readyz"
        serve.wait_for("delivery worker started")
        done = status("--url", url)
        as_json = status("--url", url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == f"crmroute {__version__} on 127.0.0.1:{serve.port}: READY"
    assert re.search(r"^  outbox +ok +.*outbox\.sqlite takes commits$", done.stdout, re.M)
    assert re.search(r"^  calls +0 in flight", done.stdout, re.M)
    assert json.loads(as_json.stdout)["ready"] is True


def test_status_of_a_server_whose_outbox_is_unusable_says_why_and_exits_3(tmp_path):
    (tmp_path / "state").write_text("a file where the outbox's folder should be")
    with ServeProcess(write_config(tmp_path, tmp_path / "state" / "outbox.sqlite")) as serve:
        url = serve.wait_for(METRICS_LINE).group(1) + "/readyz"
        done = status("--url", url)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NOT READY" in done.stdout.splitlines()[0]
    assert re.search(r"^  outbox +FAIL +cannot open outbox .*outbox\.sqlite", done.stdout, re.M)
    assert re.search(r"^  listening +ok ", done.stdout, re.M)


def test_status_without_a_server_or_a_listener_says_what_to_do(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text("")
    done = status("--config", str(config))
    assert done.returncode == 1 and "[metrics] listen" in done.stderr
    config.write_text('[metrics]\nlisten = "127.0.0.1:1"\n')  # nothing listens on port 1
    done = status("--config", str(config))
    assert done.returncode == 1 and "no answer from http://127.0.0.1:1/readyz" in done.stderr


def test_status_refuses_an_answer_that_is_not_a_readiness_report(tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class NotUs(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotUs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = status("--url", f"http://127.0.0.1:{server.server_address[1]}/readyz")
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1 and "did not answer JSON" in done.stderr


@pytest.mark.parametrize("listen, url", [
    ("127.0.0.1:9464", "http://127.0.0.1:9464/readyz"),
    ("0.0.0.0:9464", "http://127.0.0.1:9464/readyz"),
    ("[::]:9464", "http://[::1]:9464/readyz"),
    ("[::1]:9000", "http://[::1]:9000/readyz"),
])
def test_the_status_url_comes_from_the_metrics_listener(listen, url):
    assert readyz_url(listen) == url


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_version_names_the_commit_it_runs_from():
    checkout = Path(__file__).parent.parent
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    done = subprocess.run([*CRMROUTE, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    match = re.fullmatch(rf"crmroute {re.escape(__version__)}, commit ([0-9a-f]{{12}})(-dirty)? \(git checkout\)\n", done.stdout)
    assert match and head.stdout.startswith(match.group(1)), done.stdout
