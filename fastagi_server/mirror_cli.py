"""``crmroute mirror``: how fresh the CRM's mirror is, what it holds and costs; a refresh on demand."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

from typing import TYPE_CHECKING, Any

import click

from crmlookup.durations import age_text
from crmlookup.mirror import store as keys
from crmlookup.mirror.credits import CreditEstimate, estimate
from crmlookup.mirror.store import MirrorFileError, MirrorSnapshot, open_readonly, snapshot

from .cli_options import CONFIG_OPTION
from .config import Config, load_config

if TYPE_CHECKING:
    from crmlookup.mirror.refresher import PassSummary

MODULES = ("Leads", "Contacts", "Accounts", "Deals")


def _require_mirror(config: Config) -> None:
    if config.crm.backend != "zoho":
        raise click.ClickException(f"the {config.crm.backend!r} backend has no mirror (only crm.backend = \"zoho\" does)")
    if not config.mirror.enabled:
        raise click.ClickException("the mirror is off (mirror.enabled = false): every call is looked up in Zoho")


def read_snapshot(config: Config) -> MirrorSnapshot:
    path = config.mirror.resolved_path
    conn = open_readonly(path)
    try:
        return snapshot(conn, str(path))
    finally:
        conn.close()


@click.group()
def mirror() -> None:
    """The local mirror of the CRM's phone index (Zoho)."""


@mirror.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(config_path: str | None, as_json: bool) -> None:
    """Records and phones per module, the last and next refresh, API credits today and per day, the last error."""
    config = load_config(config_path)
    _require_mirror(config)
    try:
        view = read_snapshot(config)
    except MirrorFileError as exc:
        raise click.ClickException(str(exc)) from None
    now = time.time()
    records = {module: view.modules[module].records for module in MODULES if module in view.modules}
    cost = estimate(records, config.mirror, users=view.users)
    if as_json:
        click.echo(json.dumps(_as_dict(view, cost, now), indent=2))
        return
    for line in _lines(view, config, cost, now):
        click.echo(line)


def _lines(view: MirrorSnapshot, config: Config, cost: CreditEstimate, now: float) -> list[str]:
    ready = view.state.get(keys.LOAD_COMPLETE) == "1"
    lines = [f"mirror {view.path} (Zoho CRM, region {view.state.get(keys.REGION, '?')})"]
    lines.append("  state        " + ("ready: calls are answered from it" if ready else "first load in progress: calls are looked up in Zoho"))
    last = view.number(keys.LAST_REFRESH_AT)
    lines.append("  last refresh " + (f"{_when(last)} ({age_text(now - last)} ago)" if last else "never"))
    following = view.number(keys.NEXT_REFRESH_AT)
    if following:
        lines.append("  next refresh " + ("due now (is crmroute serve running?)" if following <= now else f"in {age_text(following - now)}"))
    reconciled = view.number(keys.LAST_RECONCILE_AT)
    if reconciled:
        lines.append(f"  reconciled   {_when(reconciled)} ({age_text(now - reconciled)} ago; every {age_text(config.mirror.reconcile_s)})")
    if view.state.get(keys.LAST_ERROR):
        lines.append(f"  last error   {view.state[keys.LAST_ERROR]}")
    lines.append(f"  {'module':<10} {'records':>9} {'open':>9} {'phones':>9}")
    for module in MODULES:
        counts = view.modules.get(module)
        if counts is not None:
            phones = "via links" if module == "Deals" else f"{counts.phones:,}"
            lines.append(f"  {module:<10} {counts.records:>9,} {counts.open_records:>9,} {phones:>9}")
    lines.append(f"  users        {view.users:,} ({view.active_users:,} active)")
    spent = ", ".join(f"{purpose} {n:,}" for purpose, n in sorted(view.credits_today.items())) or "none"
    lines.append(f"  API credits  today (UTC): {spent}")
    lines.append(
        f"               estimate: {cost.per_day:,} a day for the mirror (a refresh every {config.mirror.refresh_s} s: "
        f"{cost.per_refresh} each; a reconcile: {cost.per_reconcile:,}); first load {cost.first_load:,}"
    )
    return lines


def _as_dict(view: MirrorSnapshot, cost: CreditEstimate, now: float) -> dict[str, Any]:
    last = view.number(keys.LAST_REFRESH_AT)
    return {
        "path": view.path,
        "ready": view.state.get(keys.LOAD_COMPLETE) == "1",
        "last_refresh_at": last,
        "lag_s": round(now - last, 1) if last else None,
        "next_refresh_at": view.number(keys.NEXT_REFRESH_AT),
        "last_reconcile_at": view.number(keys.LAST_RECONCILE_AT),
        "last_error": view.state.get(keys.LAST_ERROR, ""),
        "modules": {module: vars(counts) for module, counts in view.modules.items()},
        "users": view.users,
        "active_users": view.active_users,
        "credits_today": view.credits_today,
        "credits_per_day_estimate": cost.per_day,
    }


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


@mirror.command()
@CONFIG_OPTION
@click.option("--full", is_flag=True, help="List every record again (a reconcile), not only what changed.")
def sync(config_path: str | None, full: bool) -> None:
    """Bring the mirror up to date now (the first load if it was never done)."""
    from crmlookup.factory import open_backend
    from crmlookup.mirror.backend import MirroredBackend

    config = load_config(config_path)
    _require_mirror(config)

    async def once() -> PassSummary:
        backend = open_backend(
            config.crm, config.directory, config.zoho, config.cache,
            mirror=config.mirror, region=config.routing.default_region, keep_mirror=True,
        )
        assert isinstance(backend, MirroredBackend) and backend.refresher is not None
        try:
            await backend.refresher.open()
            return await backend.refresher.sync(full=full)
        finally:
            await backend.aclose()

    summary = asyncio.run(once())
    click.echo(f"mirror {config.mirror.resolved_path}: {summary.describe()}")
