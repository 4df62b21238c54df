"""``crmroute status``: the running server's health, as its ``/readyz`` tells it.

It asks the server itself (``[metrics] listen`` of the configuration), so it
sees what the process sees: whether it listens, whether the CRM takes its
credentials, the mirror's first load, the outbox's commits, calls in flight.
Exit status: 0 ready, 3 not ready, 1 no answer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from typing import Any

import click

from crmlookup.durations import age_text

from .cli_options import CONFIG_OPTION
from .config import host_and_port, load_config

NOT_READY_EXIT = 3
TIMEOUT_S = 10.0
# A server bound to every address is asked on loopback.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def readyz_url(listen: str) -> str:
    host, port = host_and_port(listen)
    host = _ANY.get(host, host)
    return f"http://[{host}]:{port}/readyz" if ":" in host else f"http://{host}:{port}/readyz"


def fetch_readiness(url: str) -> dict[str, Any]:
    """The JSON of ``/readyz`` (ready or not); ClickException when the server does not answer it."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: not ready, with the same body
        body = exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"no answer from {url} ({reason}): is crmroute serve running with this [metrics] listen?") from None
    try:
        state = json.loads(body)
    except ValueError:
        raise click.ClickException(f"{url} did not answer JSON: is something else listening there?") from None
    if not isinstance(state, dict) or "ready" not in state:
        raise click.ClickException(f"{url} did not answer a crmroute readiness report")
    return state


@click.command()
@CONFIG_OPTION
@click.option("--url", help="The server's /readyz (default: from [metrics] listen).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, as /readyz gives it.")
def status(config_path: str | None, url: str | None, as_json: bool) -> None:
    """Whether the running server is ready, and why not: listening, CRM backend, mirror, outbox, calls in flight."""
    if url is None:
        config = load_config(config_path)
        if not config.metrics.listen:
            raise click.ClickException('the server tells its status on its metrics listener: set [metrics] listen = "127.0.0.1:9464" and restart it')
        url = readyz_url(config.metrics.listen)
    state = fetch_readiness(url)
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        for line in report_lines(state):
            click.echo(line)
    if not state.get("ready"):
        raise click.exceptions.Exit(NOT_READY_EXIT)


def report_lines(state: dict[str, Any]) -> list[str]:
    """The report as an admin reads it: the verdict, each check, then the counts."""
    where = ", ".join(state.get("listening") or []) or "not listening"
    lines = [f"crmroute {state.get('version', '?')} on {where}: {'READY' if state.get('ready') else 'NOT READY'}"]
    for name, check in (state.get("checks") or {}).items():
        lines.append(f"  {name:<10} {'ok  ' if check.get('ok') else 'FAIL'} {check.get('detail', '')}")
    lines.append(f"  calls      {state.get('sessions_in_flight', 0)} in flight, {state.get('connections_connecting', 0)} connecting")
    lines.extend(_outbox_lines(state.get("outbox")))
    lines.extend(_mirror_lines(state.get("mirror")))
    lines.extend(f"  note       {note}" for note in state.get("notes") or [])
    return lines


def _outbox_lines(outbox: dict[str, Any] | None) -> list[str]:
    if not outbox or not outbox.get("counts"):
        return []
    counts = outbox["counts"]
    waiting = ", ".join(f"{counts.get(state, 0):,} {state}" for state in ("pending", "in_flight", "failed", "dead"))
    oldest = outbox.get("oldest_waiting_s")
    line = f"  outbox     {waiting}; {counts.get('done', 0):,} delivered"
    line += f"; oldest waiting {age_text(oldest)}" if oldest is not None else ""
    if outbox.get("spooled"):
        line += f"; {outbox['spooled']} kept in memory"
    return [line]


def _mirror_lines(mirror: dict[str, Any] | None) -> list[str]:
    if not mirror:
        return []
    records = sum((mirror.get("records") or {}).values())
    age = mirror.get("age_s")
    refreshed = f"refreshed {age_text(age)} ago" if age is not None else "never refreshed"
    state = "ready" if mirror.get("ready") else "first load not done"
    return [f"  mirror     {state}, {refreshed}, {records:,} records ({mirror.get('file_bytes', 0) / 1e6:.1f} MB)"]
