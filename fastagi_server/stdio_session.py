"""The classic AGI session: stdin and stdout, through pyst2 (see :mod:`.stdio`).

Apart from the entry point so that both ways of running a call use it: on
asyncio's loop (:class:`StdioSession`, each reply read by a thread) and with no
event loop at all (:mod:`.stdio_route`).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, BinaryIO, Callable, TextIO

from asterisk.agi import AGI

from .environment import AgiEnvironment
from .errors import AgiConnectionClosed, AgiLimitExceeded, AgiProtocolError
from .limits import SessionLimits
from .replies import is_usage_end, is_usage_start
from .session import AgiSession
from .signals import EarlyHangup

if TYPE_CHECKING:
    # Imported where an event loop runs, never at the top: the route path without
    # one (.stdio_route) must not load asyncio.
    import asyncio


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
        self._send(command)
        reply = read_in_thread(self._read_reply)
        try:
            return await asyncio.shield(reply)
        except asyncio.CancelledError:
            self._owed = reply
            raise

    def _send(self, command: str) -> None:
        # Not pyst2's execute(): it refuses to send anything after SIGHUP, but a
        # dead channel still takes SET VARIABLE, which the hangup handler needs.
        try:
            self._agi.send_command(command)
        except BrokenPipeError:
            raise AgiConnectionClosed("stdout closed") from None

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
                # Worded as the FastAGI path words it: limit_name maps it to max_headers.
                raise AgiLimitExceeded(f"usage reply longer than {self._limits.max_headers} lines")
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
