"""``crmroute``: serve, test a lookup, check a config, load the local directory."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_options import CONFIG_OPTION, command_config
from .commands import clean
from .config import Config, demo_mode_notice, load_config
from .logs import configure_logging
from .mirror_cli import mirror
from .signals import EarlyHangup
from .outbox_cli import outbox
from .status_cli import status

if TYPE_CHECKING:
    from datetime import datetime

    from crmlookup.errors import DirectoryImportError
    from crmlookup.local_directory import ImportSummary
    from dialplan import RouteDecision


class CrmrouteGroup(click.Group):
    """Turns any error into one line on stderr and exit status 1 (a traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise click.ClickException(message) from exc


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .version import version_text  # asks git: only when --version is given

    click.echo(version_text())
    ctx.exit()


@click.group(cls=CrmrouteGroup)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version, help="Show the version and the build (commit) it came from, and exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Route inbound Asterisk calls to the CRM owner of the caller."""
    ctx.obj = {"debug": debug}
    if ctx.invoked_subcommand != "serve":  # serve sets up its own, at its configured level
        # Warnings of any command (a CRM that refused, an outbox in trouble) go out escaped, like serve's.
        configure_logging(logging.DEBUG if debug else logging.WARNING, "crmroute %(levelname)s %(name)s: %(message)s", sys.stderr)


@cli.command()
@CONFIG_OPTION
@click.option("--host", help="Address to bind (default: server.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind (default: server.port, 4573).")
@click.pass_context
def serve(ctx: click.Context, config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the FastAGI server until SIGTERM/SIGINT; SIGHUP reloads the config."""
    early_hangup = EarlyHangup()  # before anything slow: a SIGHUP at start must not end the process
    from .server import serve as run_server

    from .calllog import skip_unused_record_fields

    config = load_config(config_path)
    level = "DEBUG" if ctx.obj["debug"] else config.server.log_level.upper()
    skip_unused_record_fields()
    configure_logging(level, "%(asctime)s %(levelname)s %(name)s: %(message)s", sys.stderr, as_json=config.server.log_format == "json")
    # The HTTP libraries log every request at INFO (callers' numbers in the URLs); our own lines say what matters.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    notice = demo_mode_notice(config)
    if notice:
        logging.getLogger("crmroute.server").warning("%s", notice)
    else:
        logging.getLogger("crmroute.server").info("configuration %s", config.source or "built-in defaults")
    from .event_loop import run as run_on_loop

    run_on_loop(run_server(config, host=host, port=port, hangup_seen=early_hangup.seen, exiting=True), config.server.event_loop)


@cli.command()
@click.argument("number")
@click.option("--did", default="", help="The dialled number (selects the policy that lists it).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--explain", is_flag=True, help="Print every step of the decision.")
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="EXT=STATE",
    help="Pretend Asterisk reports this device state (e.g. 101=INUSE); repeatable. Otherwise states are unknown offline.",
)
@click.option("--at", "at", metavar="TIME", help="Decide as if it were TIME (ISO 8601, e.g. 2025-03-07T20:30+01:00; no offset: this machine's zone).")
@click.option(
    "--exit-status",
    "exit_status",
    is_flag=True,
    help="Exit with a code per status: 0 OWNER/SHARED, 3 UNMAPPED, 4 NOMATCH, 5 TIMEOUT, 6 ERROR (2: not a phone number).",
)
@CONFIG_OPTION
@click.pass_context
def lookup(
    ctx: click.Context,
    number: str,
    did: str,
    as_json: bool,
    explain: bool,
    states: tuple[str, ...],
    at: str | None,
    exit_status: bool,
    config_path: str | None,
) -> None:
    """Show where a call from NUMBER would go, and why.

    Exits 0 with a decision, 1 when the CRM could not answer (TIMEOUT, ERROR),
    2 when NUMBER is not a phone number; --exit-status gives every status its code.
    """
    from dialplan import FixedDeviceStates, InboundCall, NoDeviceStates
    from dialplan.router import Router

    from .app import App

    config = command_config(config_path)
    given = _parse_states(states)
    probe = FixedDeviceStates(given) if given else NoDeviceStates(OFFLINE)
    when = _parse_time(at) if at else None

    async def decide() -> RouteDecision:
        app = App.from_config(config)
        router = app.router if when is None else Router(config.routing, app.backend, history=app.router.history, clock=lambda: when)
        try:
            return await router.decide(InboundCall(caller=number, did=did), probe)
        finally:
            await app.aclose()

    decision = asyncio.run(decide())
    _show_decision(decision, config, given, as_json=as_json, explain=explain)
    ctx.exit(lookup_exit_code(decision, number, exit_status))


def _show_decision(decision: RouteDecision, config: Config, given: dict[str, str], *, as_json: bool, explain: bool) -> None:
    variables = decision.channel_variables()
    if as_json:
        payload = {
            "variables": variables,
            "normalised_number": decision.normalised_number,
            "from_cache": decision.from_cache,
            "policy": decision.policy,
            "rule": decision.rule,
            "device_states": decision.device_states if given else None,
            "chain": decision.chain,
            "steps": decision.steps,
        }
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    if explain:
        click.echo(f"backend: {config.crm.backend} ({_backend_description(config)})")
        click.echo(f"policy: {decision.policy}")
        if given:
            click.echo(f"device states: as given by --state ({', '.join(f'{k}={v}' for k, v in given.items())}); others UNKNOWN")
        else:
            click.echo(f"device states: unknown offline, not checked ({OFFLINE}; try --state 101=INUSE)")
        for step in decision.steps:
            click.echo(f"  - {printable(step)}")
        click.echo(f"  - decided in {decision.lookup_ms} ms{' (from cache)' if decision.from_cache else ''}")
    width = max(len(name) for name in variables)
    for name, value in variables.items():
        click.echo(f"{name.ljust(width)}  {printable(value)}")


# ``crmroute lookup --exit-status``: the exit code of each CRM_ROUTE_STATUS.
EXIT_STATUS_CODES = {"OWNER": 0, "SHARED": 0, "UNMAPPED": 3, "NOMATCH": 4, "TIMEOUT": 5, "ERROR": 6}
# Without it: a decision is 0, a CRM that could not answer 1.
CRM_FAILED = frozenset({"TIMEOUT", "ERROR"})
EXIT_NOT_A_NUMBER = 2


def lookup_exit_code(decision: RouteDecision, number: str, per_status: bool) -> int:
    """The exit code of ``crmroute lookup``: a wrong "ok" would hide a CRM that failed."""
    from crmlookup.phone import is_withheld

    if not decision.normalised_number and decision.status.value == "NOMATCH" and not is_withheld(number):
        return EXIT_NOT_A_NUMBER
    status = decision.status.value
    if per_status:
        return EXIT_STATUS_CODES[status]
    return 1 if status in CRM_FAILED else 0


def printable(text: str) -> str:
    """CRM text for a terminal: control characters (newlines, escape sequences) become spaces."""
    return clean(text, max_bytes=len(text.encode("utf-8")))


# What --explain says about device states when no Asterisk channel can be asked.
OFFLINE = "crmroute lookup has no Asterisk channel to ask"


def _parse_states(pairs: tuple[str, ...]) -> dict[str, str]:
    from dialplan.availability import DEVICE_STATES

    states = {}
    for pair in pairs:
        extension, sep, state = pair.partition("=")
        if not sep or not extension or state.upper() not in DEVICE_STATES:
            raise click.BadParameter(f"{pair!r}: expected EXT=STATE with STATE one of {', '.join(DEVICE_STATES)}", param_hint="--state")
        states[extension] = state.upper()
    return states


def _parse_time(text: str) -> datetime:
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time like 2025-03-07T20:30+01:00", param_hint="--at") from None
    return moment.astimezone()  # no offset given: this machine's time zone


def _backend_description(config: Config) -> str:
    """Where lookups go, in the words of the backend's plugin."""
    plugin = config.plugin
    return plugin.describe(config.settings_of(plugin))


@cli.command("check-config")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@CONFIG_OPTION
@click.option("--online", is_flag=True, help="Also prove the CRM credentials with one cheap request and check the names the CRM must know.")
def check_config(file: str | None, config_path: str | None, online: bool) -> None:
    """Validate the configuration (FILE, else --config, $CRMROUTE_CONFIG, /etc/crmroute/crmroute.toml).

    Lists every problem (exit 1), opens the backend it names, and warns about
    configured owners no CRM user has; creates nothing. With --online, a CRM
    that cannot be reached or refuses the credentials fails the check.
    """
    from dataclasses import replace

    from .config import config_from_dict, config_path as chosen_path, config_problems, read_toml
    from .config_check import inspect

    path = chosen_path(file or config_path)
    where = str(path) if path else "built-in defaults"
    data = read_toml(path)
    problems = config_problems(data)
    if not problems:
        config = replace(config_from_dict(data), source=str(path or ""))
        report = asyncio.run(inspect(config, online=online))
        problems = report.problems
        for warning in report.warnings:
            click.echo(f"{where}: warning: {warning}", err=True)
    if len(problems) == 1:
        raise click.ClickException(f"{where}: {problems[0]}")
    for problem in problems:
        click.echo(f"{where}: {problem}", err=True)
    if problems:
        raise click.ClickException(f"{where}: {len(problems)} problems")
    notice = demo_mode_notice(config)
    if notice:
        click.echo(f"{where}: warning: {notice}", err=True)
    click.echo(
        f"{where}: ok (backend {config.crm.backend}: {_backend_description(config)}; "
        f"listen {config.server.host}:{config.server.port}; deadline {config.routing.deadline_ms} ms; "
        f"{len(config.routing.owner_extensions)} owner(s) mapped; "
        f"{len(config.routing.policies)} DID policy(ies), {len(config.routing.teams)} team(s); "
        f"outbox {report.outbox}; metrics {'on ' + config.metrics.listen if config.metrics.listen else 'off'})"
    )


@cli.group()
def directory() -> None:
    """Manage the local directory (the embedded CRM)."""


@directory.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--path", "db_path", type=click.Path(dir_okay=False), help="Directory file (default: directory.path from the config).")
@click.option("--replace", is_flag=True, help="Empty the directory first (the leads crmroute created from calls stay).")
@click.option("--skip-invalid", is_flag=True, help="Import the good rows and list the bad ones (default: a bad row refuses the file).")
@click.option("--dry-run", is_flag=True, help="Check the file and say what would be imported; write nothing.")
@CONFIG_OPTION
def directory_import(csv_file: str, db_path: str | None, replace: bool, skip_invalid: bool, dry_run: bool, config_path: str | None) -> None:
    """Load CSV_FILE (records or users) into the directory: every row or none."""
    from crmlookup.errors import DirectoryImportError
    from crmlookup.local_directory import LocalDirectory
    from crmlookup.local_directory.directory import open_connection
    from dialplan import DialTargets

    config = command_config(config_path)
    target = db_path or config.directory.path
    if not target:
        raise click.UsageError("no directory file: pass --path FILE or set directory.path in the config")
    # Extensions are checked as the router checks them: one it would never dial is a bad row.
    dialable = DialTargets(config.routing.dial_template, config.routing.extension_pattern).is_valid
    conn = open_connection(target, create=True)
    store = LocalDirectory(conn, target)
    try:
        summary = store.import_file(
            csv_file, config.routing.default_region, replace=replace, skip_invalid=skip_invalid, dry_run=dry_run, valid_extension=dialable
        )
    except DirectoryImportError as exc:
        for line, reason in exc.problems:
            click.echo(f"{csv_file}:{line}: {reason}", err=True)
        raise click.ClickException(_refusal(exc)) from None
    finally:
        store.close()
    for line, reason in summary.skipped:
        click.echo(f"{csv_file}:{line}: {reason}", err=True)
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {summary.records} record(s), {summary.phones} phone(s), {summary.users} user(s) into {Path(target)}")
    for note in _import_notes(summary):
        click.echo(note)


def _refusal(exc: DirectoryImportError) -> str:
    """Why nothing was imported, in one line."""
    if exc.stopped_at:
        return (
            f"nothing imported: reading stopped at line {exc.stopped_at}, after {exc.total} bad rows "
            "(the rest of the file is unchecked); fix these, or import the good rows with --skip-invalid"
        )
    return f"nothing imported: {exc.total} bad row(s) (import the good rows with --skip-invalid)"


def _import_notes(summary: ImportSummary) -> list[str]:
    notes = []
    if summary.skipped_count:
        shown = f" (the first {len(summary.skipped)} listed)" if summary.skipped_count > len(summary.skipped) else ""
        notes.append(f"left out {summary.skipped_count} bad row(s){shown}")
    if summary.without_phone:
        lines = ", ".join(str(line) for line in summary.without_phone_lines)
        more = ", ..." if summary.without_phone > len(summary.without_phone_lines) else ""
        notes.append(f"skipped {summary.without_phone} record(s) without a phone number (line {lines}{more}): no call can reach them")
    if summary.kept_leads:
        notes.append(f"kept {summary.kept_leads} lead(s) crmroute created from calls")
    if summary.dry_run:
        notes.append("dry run: nothing written")
    return notes


cli.add_command(outbox)
cli.add_command(mirror)
cli.add_command(status)


def main() -> None:
    cli(prog_name="crmroute")
