"""Classic AGI over stdin/stdout, through pyst2, for PBXs that run no daemon.

Dialplan (the script name, then the DID)::

    same => n,AGI(/opt/crmroute/bin/crmroute-agi,route,${ARG1})

(in a Gosub like the sample's ``[crm-route]``, where the DID is ``${ARG1}``).
Options go before the script name: ``AGI(crmroute-agi,--config=/etc/crmroute/crmroute.toml,route,${ARG1})``.

The same handlers as the FastAGI server run here, so the variables set are
the same. Asterisk tells a process AGI of a hang-up in two ways, both
handled: SIGHUP (recorded by pyst2's handler) and a ``HANGUP`` line on stdin.
After either, the variables are still set (Asterisk allows it on a dead
channel) and the process exits at once.
"""

from __future__ import annotations

import io
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from .errors import AgiConnectionClosed, AgiLimitExceeded, AgiProtocolError
from .limits import SessionLimits
from .signals import EarlyHangup
from .stdio_session import StdinReader, StdioSession, read_in_thread

if TYPE_CHECKING:
    # asyncio is imported after the SIGHUP handler is in place (a hang-up during
    # start-up must find it there as early as can be), and only for the calls that
    # need an event loop (see .stdio_route).
    from .config import Config

__all__ = ["StdinReader", "StdioSession", "main", "parse_argv", "read_in_thread"]


def parse_argv(argv: list[str]) -> tuple[str | None, str, tuple[str, ...]]:
    """``[--config FILE] [SCRIPT [ARG...]]`` -> (config path, script, args); script defaults to ``route``."""
    config_path = None
    args = list(argv)
    while args and args[0].startswith("--config"):
        option = args.pop(0)
        if "=" in option:
            config_path = option.split("=", 1)[1]
        elif args:
            config_path = args.pop(0)
    script = args.pop(0) if args else "route"
    return config_path, script, tuple(args)


USAGE = """usage: crmroute-agi [--config=FILE] [SCRIPT [ARG...]]

Classic (process) AGI for Asterisk: one call on stdin/stdout, then exit.
Run it from the dialplan, not from a terminal:

    same => n,AGI(/opt/crmroute/venv/bin/crmroute-agi,route,${ARG1})
    exten => s,1,AGI(/opt/crmroute/venv/bin/crmroute-agi,outcome,${ARG1})

SCRIPT is route (the default) or outcome; the first ARG is the DID.
--config=FILE: the configuration (default: $CRMROUTE_CONFIG, else
/etc/crmroute/crmroute.toml if it exists, else the built-in defaults).
One line per call is logged on stderr (server.log_level), which Asterisk
passes on (under systemd: journalctl -u asterisk).
"""

_HELP = frozenset({"-h", "--help"})


def leading_options(argv: list[str]) -> list[str]:
    """The options before the script name (``--config FILE`` counted as one)."""
    options = []
    args = list(argv)
    while args and args[0].startswith("-"):
        option = args.pop(0)
        options.append(option)
        if option == "--config" and args:
            args.pop(0)
    return options


def _session_timed_out(signum: int, frame: object) -> None:
    raise AgiLimitExceeded("session time limit reached")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``crmroute-agi``: one call, then exit. Returns the exit status.

    ``route`` on the local directory runs without an event loop (:mod:`.stdio_route`:
    asyncio is not even imported); every other call runs on asyncio's.
    """
    early_hangup = EarlyHangup()
    import logging

    from .config import demo_mode_notice, load_config
    from .logs import configure_logging

    args = sys.argv[1:] if argv is None else argv
    options = leading_options(args)
    if _HELP & set(options):
        sys.stdout.write(USAGE)
        return 0
    if "--version" in options:
        from . import __version__

        sys.stdout.write(f"crmroute-agi {__version__}\n")
        return 0
    if sys.stdin.isatty():  # a person at a terminal, not Asterisk: say what this is instead of waiting
        sys.stderr.write(USAGE)
        return 2
    config_path, script, arguments = parse_argv(args)
    # Asterisk passes stderr on (its console, or the journal): our own lines only,
    # at server.log_level once the configuration is read; other libraries' warnings.
    configure_logging(logging.WARNING, "crmroute-agi %(levelname)s %(name)s: %(message)s", sys.stderr)
    log = logging.getLogger("crmroute.stdio")
    config: Config | None = None
    config_problem = ""
    try:
        config = load_config(config_path)
    except Exception as exc:
        config_problem = str(exc)
        log.error("%s", exc)
    else:
        logging.getLogger("crmroute").setLevel(config.server.log_level.upper())
        if not config.source:
            log.warning("%s", demo_mode_notice(config))
    limits = config.limits if config else SessionLimits()
    # Asterisk waits as long as we do: bound the whole session.
    signal.signal(signal.SIGALRM, _session_timed_out)
    signal.setitimer(signal.ITIMER_REAL, limits.session_timeout_ms / 1000)
    stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace", line_buffering=True)
    try:
        if config is not None and _without_event_loop(config, script):
            _route_now(config, stdout, limits, script, arguments, early_hangup)
        else:
            _run_on_event_loop(config, config_problem, stdout, limits, script, arguments, early_hangup)
    except (AgiLimitExceeded, AgiConnectionClosed, AgiProtocolError) as exc:
        log.warning("session-ended peer=stdio error=%r", str(exc))
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return 0


def _without_event_loop(config: Config, script: str) -> bool:
    from .stdio_route import routes_without_event_loop

    return routes_without_event_loop(config, script)


def _route_now(
    config: Config, stdout: TextIO, limits: SessionLimits, script: str, arguments: tuple[str, ...], early_hangup: EarlyHangup
) -> None:
    from .stdio_route import SyncStdioSession, route_now

    session = SyncStdioSession(sys.stdin.buffer, stdout, limits, script, arguments, early_hangup=early_hangup)
    try:
        route_now(session, config)
    finally:
        session.close()


def _run_on_event_loop(
    config: Config | None,
    config_problem: str,
    stdout: TextIO,
    limits: SessionLimits,
    script: str,
    arguments: tuple[str, ...],
    early_hangup: EarlyHangup,
) -> None:
    """One call on asyncio's event loop: any backend, any script."""
    import asyncio
    import logging

    from .app import App
    from .handlers import answer_fallback, run_session

    log = logging.getLogger("crmroute.stdio")

    async def run() -> None:
        session = StdioSession(sys.stdin.buffer, stdout, limits, script, arguments, early_hangup=early_hangup)
        try:
            if config is None:
                await answer_fallback(session, f"configuration error: {config_problem}")
                return
            try:
                app = App.from_config(config)
            except Exception as exc:  # e.g. the directory file is missing
                log.error("cannot open the CRM backend: %s", exc)
                await answer_fallback(session, f"backend unavailable: {exc}")
                return
            try:
                await run_session(session, app)
            finally:
                await app.aclose()
        finally:
            session.close()

    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
