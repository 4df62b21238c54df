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
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, BinaryIO, Callable, TextIO

from asterisk.agi import AGI

from .errors import AgiConnectionClosed, AgiLimitExceeded, AgiProtocolError
from .environment import AgiEnvironment
from .limits import SessionLimits
from .replies import is_usage_end, is_usage_start
from .session import AgiSession
from .signals import EarlyHangup

if TYPE_CHECKING:
    # asyncio is imported in main(), after the SIGHUP handler is in place: a
    # hang-up during start-up must find it there as early as can be.
    import asyncio

    from .config import Config


class StdinReader:
    """stdin as pyst2 reads it: UTF-8 with replacement, bounded lines and header count,
    and an end of input before the header block is complete reported as such."""

    def __init__(self, raw: BinaryIO, limits: SessionLimits):
        self._raw = raw
        self._limits = limits
        self.in_headers = True
        self.header_lines = 0
        self._keys: set[str] = set()  # header keys seen: pyst2 would let a repeat override the first

    def readline(self) -> str:
        limit = self._limits.max_line_bytes
        line = self._raw.readline(limit + 2)
        if not line:
            where = " before the end of the header block" if self.in_headers else ""
            raise AgiConnectionClosed(f"stdin closed{where}")
        if len(line.rstrip(b"\r\n")) > limit:
            raise AgiLimitExceeded(f"line longer than {limit} bytes")
        if self.in_headers:
            if line.strip() == b"":
                self.in_headers = False
            else:
                self.header_lines += 1
                if self.header_lines > self._limits.max_headers:
                    raise AgiLimitExceeded(f"more than {self._limits.max_headers} header lines")
                self._note_key(line)
        return line.decode("utf-8", "replace")

    def _note_key(self, line: bytes) -> None:
        """Refuse a key sent twice (see :func:`.environment.parse_header_block`)."""
        key = line.split(b":", 1)[0].strip()
        text = key.decode("utf-8", "replace")
        if text in self._keys:
            raise AgiProtocolError(f"header {text!r} sent twice in one header block")
        self._keys.add(text)


class QuietAGI(AGI):  # type: ignore[misc]  # pyst2 ships no type information
    """pyst2's AGI. Its stderr chatter (every header, every command) is sent to
    /dev/null: Asterisk prints a process AGI's stderr on its console."""


class StdioSession(AgiSession):
    """An AGI session on stdin/stdout, through pyst2's :class:`asterisk.agi.AGI`."""

    def __init__(
        self,
        stdin: BinaryIO,
        stdout: TextIO,
        limits: SessionLimits,
        script: str,
        arguments: tuple[str, ...],
        *,
        early_hangup: EarlyHangup | None = None,
    ):
        self._limits = limits
        self._reader = StdinReader(stdin, limits)
        self._devnull = open(os.devnull, "w")
        # Reads the header block; also installs pyst2's SIGHUP handler.
        self._agi = QuietAGI(stdin=self._reader, stdout=stdout, stderr=self._devnull)
        if early_hangup is not None and early_hangup.seen:
            self._agi._got_sighup = True  # it came before pyst2's handler was in place
        self.env = AgiEnvironment(dict(self._agi.env))
        self.script = script
        self.arguments = arguments
        self.peer = "stdio"
        self._hangup_line = False
        self._owed: asyncio.Future[str] | None = None  # a reply still to be read, its waiter gone

    @property
    def hung_up(self) -> bool:  # type: ignore[override]
        return self._agi._got_sighup or self._hangup_line

    def _readline(self) -> str:
        return self._reader.readline().rstrip("\r\n")

    async def _exchange(self, command: str) -> str:
        """Write the command, then wait for its reply without blocking the event loop.

        The reply is read by a thread, so the routing deadline can stop waiting
        for it (a slow device-state answer); that reply is still read, and
        dropped, before the next command is written: one command, one reply.
        """
        import asyncio  # loaded by main() already (see the module's imports)

        if self._owed is not None:
            owed, self._owed = self._owed, None
            await owed  # the reply to a command whose waiter gave up; raises what ended the session
        # Not pyst2's execute(): it refuses to send anything after SIGHUP, but a
        # dead channel still takes SET VARIABLE, which the hangup handler needs.
        try:
            self._agi.send_command(command)
        except BrokenPipeError:
            raise AgiConnectionClosed("stdout closed") from None
        reply = read_in_thread(self._read_reply)
        try:
            return await asyncio.shield(reply)
        except asyncio.CancelledError:
            self._owed = reply
            raise

    def _read_reply(self) -> str:
        """One reply (a ``520`` usage block joined with newlines), ``HANGUP`` lines noted and skipped."""
        line = self._readline()
        while line == "HANGUP":
            self._hangup_line = True
            line = self._readline()
        if not is_usage_start(line):
            return line
        usage = [line]
        while not is_usage_end(line):
            line = self._readline()
            usage.append(line)
            if len(usage) > self._limits.max_headers:
                raise AgiLimitExceeded("usage reply too long")
        return "\n".join(usage)

    def close(self) -> None:
        self._devnull.close()
        if self._owed is not None and self._owed.done() and not self._owed.cancelled():
            self._owed.exception()  # a late reply nobody needs: its error, if any, is not news


def read_in_thread(read: Callable[[], str]) -> asyncio.Future[str]:
    """``read()`` on a thread of its own; its result (or error) settles the returned future.

    A daemon thread, not an executor's: a process whose Asterisk never answers
    must still be able to exit (the session limit ends it) while a read is blocked.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(outcome: str | BaseException) -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def work() -> None:
        try:
            outcome: str | BaseException = read()
        except Exception as exc:  # handed to whoever awaits the reply
            outcome = exc
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=work, name="agi-stdin", daemon=True).start()
    return future


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
    """Entry point of ``crmroute-agi``: one call, then exit. Returns the exit status."""
    early_hangup = EarlyHangup()
    import asyncio
    import logging

    from .app import App
    from .config import demo_mode_notice, load_config
    from .handlers import answer_fallback, run_session
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

    try:
        asyncio.run(run())
    except (AgiLimitExceeded, AgiConnectionClosed, AgiProtocolError) as exc:
        log.warning("session-ended peer=stdio error=%r", str(exc))
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
