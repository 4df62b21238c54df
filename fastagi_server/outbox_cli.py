"""``crmroute outbox``: what waits for the CRM, what failed and why, and what to do about it."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime
from typing import TYPE_CHECKING

import click

from crmlookup.durations import age_text as age
from dialplan.outbox import OutboxError, OutboxState, OutboxStore, open_store
from dialplan.outbox.store import WriteRow, WriteState
from dialplan.outbox.worker import PAUSE_KEY

from .cli_options import CONFIG_OPTION, command_config
from .config import Config

if TYPE_CHECKING:
    from dialplan.outbox.worker import FlushSummary

STATES = [state.value for state in OutboxState]
_RELATIVE = re.compile(r"(\d+)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """``2024-05-01``, ``2024-05-01T10:00`` (local time) or ``7d``/``12h``/``30m`` ago, as epoch seconds."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (2024-05-01, 2024-05-01T10:00) or an age (7d, 12h, 30m)") from None


def _open(config: Config) -> OutboxStore:
    """The outbox the configuration names; never a new empty one (that would show a wrong picture)."""
    try:
        return open_store(config.outbox.resolved_path, config.store, create=False)
    except OutboxError as exc:
        if config.store.url or config.store.url_file:
            raise click.ClickException(f"{exc} (store.url of {config.source or 'the configuration'})") from None
        where = f"outbox.path of {config.source}" if config.source else "the default, as no configuration file was found"
        raise click.ClickException(
            f"{exc} ({where}): nothing was recorded there; the server's outbox is the outbox.path of its configuration (pass --config FILE)"
        ) from None


@click.group()
def outbox() -> None:
    """The outbox: call outcomes on their way to the CRM."""


@outbox.command()
@CONFIG_OPTION
def status(config_path: str | None) -> None:
    """Outcomes per state, the oldest waiting, the next attempt, and whether the queue is paused."""
    config = command_config(config_path)
    box = _open(config)
    try:
        now = time.time()
        counts = box.counts()
        oldest = box.oldest_recorded([OutboxState.PENDING, OutboxState.FAILED, OutboxState.IN_FLIGHT])
        next_due = box.next_due([OutboxState.FAILED])
        pause = box.get_meta(PAUSE_KEY)
        failed = box.list_rows(OutboxState.FAILED, limit=1)
    finally:
        box.close()
    click.echo(f"outbox {box.path}")
    notes = {
        "pending": f"oldest waiting {age(now - oldest)}" if oldest and counts["pending"] + counts["failed"] else "",
        "failed": (f"next attempt {'now' if next_due <= now else 'in ' + age(next_due - now)}; last error: {failed[0].last_error}" if failed and next_due else ""),
        "dead": "see: crmroute outbox list --state dead; then: crmroute outbox retry ID|--all" if counts["dead"] else "",
    }
    for state in STATES:
        note = notes.get(state, "")
        click.echo(f"  {state.replace('_', ' '):<10} {counts[state]:>7}" + (f"   {note}" if note else ""))
    if pause:
        paused = json.loads(pause)
        click.echo(
            f"PAUSED for {age(now - float(paused.get('since', now)))}: {paused.get('reason', '')}\n"
            "  nothing is lost; fix the credentials, then reload the server (SIGHUP) or run: crmroute outbox flush"
        )


@outbox.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only outcomes in this state.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@CONFIG_OPTION
def list_outcomes(state: str | None, limit: int, config_path: str | None) -> None:
    """The most recent outcomes: id, state, call, caller, age, attempts, next attempt, last error."""
    config = command_config(config_path)
    box = _open(config)
    try:
        rows = box.list_rows(OutboxState(state) if state else None, limit)
        writes = box.writes_for([row.id for row in rows])
    finally:
        box.close()
    now = time.time()
    click.echo(f"{'id':>6}  {'state':<9}  {'call id':<20}  {'caller':<16}  {'call':<8}  {'age':>7}  {'tries':>5}  {'next':>7}  last error")
    for row in rows:
        waiting = row.state in ("pending", "failed")
        next_attempt = ("now" if row.next_attempt_at <= now else age(row.next_attempt_at - now)) if waiting else ""
        click.echo(
            f"{row.id:>6}  {row.state:<9}  {row.call_id[:20]:<20}  {(row.caller or 'withheld')[:16]:<16}  "
            f"{'answered' if row.answered else 'missed':<8}  {age(now - row.recorded_at):>7}  {row.attempts:>5}  {next_attempt:>7}  {row.last_error}"
            + _recording_note(writes.get(row.id, {}).get("recording"), row.last_error)
        )


def _recording_note(write: WriteRow | None, said: str) -> str:
    """What became of the call's recording (uploaded, linked, refused), when it has one on its way."""
    if write is None:
        return ""
    if write.state is WriteState.DONE:
        return f"  [recording {write.error or 'delivered'}]"
    if write.state is WriteState.SENT:
        return "  [recording: upload under way or interrupted; looked for on the Call before another]"
    return "" if not write.error or write.error in said else f"  [recording not delivered: {write.error}]"


@outbox.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Every dead and failed outcome.")
@CONFIG_OPTION
def retry(ids: tuple[int, ...], everything: bool, config_path: str | None) -> None:
    """Make dead (or failed) outcomes due now; the worker takes them up at once."""
    if bool(ids) == everything:
        raise click.UsageError("give outcome ids or --all (not both)")
    config = command_config(config_path)
    box = _open(config)
    try:
        states = {} if everything else box.states_of(ids)
        count = box.retry(time.time(), None if everything else list(ids))
    finally:
        box.close()
    click.echo(f"{count} outcome(s) due again")
    missing = [str(i) for i in ids if i not in states]
    settled = [f"{i} is {states[i].replace('_', ' ')}" for i in ids if states.get(i) not in (None, "dead", "failed")]
    if missing or settled:
        said = ([f"no outcome {', '.join(missing)} in {box.path}"] if missing else []) + settled
        raise click.ClickException(f"{'; '.join(said)} (only dead and failed outcomes are retried: see crmroute outbox list)")


@outbox.command()
@click.option("--since", required=True, help="Recorded since: 2024-05-01, 2024-05-01T10:00 (local time), or 7d / 12h ago.")
@CONFIG_OPTION
def replay(since: str, config_path: str | None) -> None:
    """Deliver again everything recorded since a date, delivered or not.

    Records the CRM still holds are found and left alone; only what is
    missing there is written again.
    """
    now = time.time()
    start = parse_since(since, now)
    config = command_config(config_path)
    box = _open(config)
    try:
        count = box.replay(start, now)
    finally:
        box.close()
    click.echo(f"{count} outcome(s) recorded since {datetime.fromtimestamp(start).isoformat(timespec='minutes')} will be delivered again")


@outbox.command()
@click.option("--max-seconds", type=click.FloatRange(0.1, 86_400), help="Stop after this long.")
@CONFIG_OPTION
def flush(max_seconds: float | None, config_path: str | None) -> None:
    """Deliver every due outcome now (with the server stopped, or next to it); exit 1 if some remain."""
    from .app import App

    config = command_config(config_path)
    _open(config).close()  # an outbox that is not there has nothing to deliver

    async def deliver() -> tuple[FlushSummary, dict[str, int]]:
        app = App.from_config(config)
        try:
            summary = await app.delivery_worker.flush(max_seconds=max_seconds)
            return summary, app.outbox.counts()
        finally:
            await app.aclose()

    summary, counts = asyncio.run(deliver())
    click.echo(f"delivered {summary.delivered}, failed {summary.failed}, dead {summary.dead} in {summary.rounds} round(s)")
    waiting = counts["pending"] + counts["failed"] + counts["in_flight"]
    if summary.paused:
        raise click.ClickException(f"paused: {summary.paused} ({waiting} outcome(s) kept)")
    if waiting:
        raise click.ClickException(f"{waiting} outcome(s) still waiting (see: crmroute outbox status)")
