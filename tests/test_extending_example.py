"""docs/extending.md's worked example, run exactly as written.

The plugin package is installed with pip into a new virtual environment
(which sees this crmroute through a site directory, so nothing is fetched),
found there through its ``crmroute.backends`` entry point, picked by
``[crm] backend``; the embedding program serves it, with its own AGI script,
over real TCP; the outbox's delivery worker hands the call outcomes to the
plugin's writer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import site
import subprocess
import threading
import venv
from pathlib import Path

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import run
from test_outbox_serve import wait_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```", re.S | re.M)
CLIENT = "+34928000000"  # stored as "928 00 00 00" in the example's CSV


def example_files() -> dict[str, str]:
    return dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))


def listening_port(lines: list[str]) -> str | None:
    for line in list(lines):
        found = re.search(r"listening on port (\d+)", line)
        if found:
            return found[1]
    return None


@pytest.fixture(scope="module")
def throwaway_venv(tmp_path_factory) -> Path:
    """A new virtual environment with pip, that sees this environment's packages (crmroute, setuptools) as a site directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root / "env")
    python = root / "env" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    outer = [path for path in site.getsitepackages() if Path(path).is_dir()]
    (Path(purelib) / "outer-environment.pth").write_text("".join(f"import site; site.addsitedir({path!r})\n" for path in outer))
    return python


def test_the_worked_example_runs_as_written(tmp_path, throwaway_venv):
    files = example_files()
    assert {"crmroute-tinycrm/pyproject.toml", "crmroute-tinycrm/crmroute_tinycrm/__init__.py", "site/crmroute.toml", "site/clients.csv", "site/embed.py"} <= set(files)
    for name, text in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CRMROUTE_CONFIG")}
    install = subprocess.run(
        [throwaway_venv, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(tmp_path / "crmroute-tinycrm")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # Only the throwaway environment has the plugin: this one does not know the name.
    from importlib.metadata import entry_points

    assert "tinycrm" not in {ep.name for ep in entry_points(group="crmroute.backends")}

    site_dir = tmp_path / "site"
    check = subprocess.run([throwaway_venv, "-m", "fastagi_server", "check-config", "crmroute.toml"], cwd=site_dir, capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "backend tinycrm: clients.csv" in check.stdout

    server = subprocess.Popen([throwaway_venv, "embed.py"], cwd=site_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(server.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        port = int(wait_for(lambda: listening_port(lines), 60, what="the example to listen"))
        routed = run(AsteriskPeer().call(port, asterisk_headers(caller=CLIENT, uniqueid="1700000000.7")))
        assert routed.variables["CRM_ROUTE_STATUS"] == "OWNER"
        assert routed.variables["CRM_TARGET"] == "PJSIP/101"
        assert routed.variables["CRM_CALLER_NAME"] == "Marta Ruiz"
        assert routed.variables["CRM_MODULE"] == "Clients"

        who = run(AsteriskPeer().call(port, asterisk_headers(script="whoami", caller=CLIENT)))
        assert who.variables["WHO"] == "ana"

        hangup = AsteriskPeer(channel_variables={
            "DIALSTATUS": "ANSWER", "DIALEDPEERNUMBER": "101", "ANSWEREDTIME": "42",
            **{name: routed.variables[name] for name in ("CRM_ROUTE_STATUS", "CRM_OWNER_ID", "CRM_MODULE", "CRM_RECORD_ID", "CRM_EXTENSION")},
        })
        recorded = run(hangup.call(port, asterisk_headers(script="outcome", caller=CLIENT, uniqueid="1700000000.7", extension="h")))
        assert recorded.variables["CRM_OUTCOME"] == "recorded"

        calls_log = site_dir / "calls.jsonl"
        written = wait_for(lambda: calls_log.exists() and calls_log.read_text().splitlines(), 60, what="the writer to receive the outcome")
        assert [json.loads(line) for line in written] == [{"id": "1700000000.7", "answered": True, "phone": CLIENT}]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        reader.join(timeout=5)
    assert code == 0, "".join(lines)
