"""Command and reply pairing for one FastAGI session.

Asterisk reads one AGI command at a time and answers each with one reply (a
``520`` usage reply spans several lines). A handler may stop waiting for a
reply (the routing deadline cancels its wait); Asterisk answers that command
all the same, so the reply is still owed: the next command is written only
once that reply has come and been dropped. Every reply thus meets its own
command, with no task or shield per command to guarantee it.

This is the session half of a FastAGI connection; the protocol half
(:mod:`.connection`) frames bytes into lines, enforces the limits and owns the
transport, and hands reply lines here.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from .replies import is_usage_end, is_usage_start


class ReplyPairing:
    """Pairs each command written with its reply line.

    It keeps no reference to the connection (the writer is passed with each
    command): a connection is then freed as soon as it closes, not at the next
    garbage collection, with its read buffer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_usage_lines: int):
        self._loop = loop
        self._max_usage_lines = max_usage_lines
        # The reply owed for the command last written; it stays owed (and this
        # set) until its line arrives, even if its waiter gave up meanwhile.
        self.reply: asyncio.Future[str] | None = None
        # Set while a command waits for an abandoned reply to arrive first.
        self.owed: asyncio.Future[None] | None = None
        self.command = ""  # the command the owed reply is for
        self._usage: list[str] | None = None  # lines of a 520 block being read

    @property
    def owes_reply(self) -> bool:
        """A command is out and its reply has not come, whether or not anyone still waits for it."""
        return self.reply is not None

    @property
    def abandoned(self) -> bool:
        """The reply owed has nobody waiting for it, and no command waits behind it."""
        return self.reply is not None and self.reply.done() and self.owed is None

    async def exchange(self, command: str, write: Callable[[bytes], None]) -> str:
        """Write ``command`` with ``write`` (after any reply still owed has come) and return its reply."""
        if self.reply is not None:
            owed: asyncio.Future[None] = self._loop.create_future()
            self.owed = owed
            await owed
        reply: asyncio.Future[str] = self._loop.create_future()
        self.reply = reply
        self.command = command
        write(command.encode("utf-8") + b"\n")
        return await reply

    def line_received(self, line: str) -> str:
        """A reply line (``HANGUP`` lines are the protocol's); "" or the limit it broke."""
        if self._usage is not None:
            self._usage.append(line)
            if is_usage_end(line):
                usage, self._usage = self._usage, None
                self._deliver("\n".join(usage))
            elif len(self._usage) > self._max_usage_lines:
                return f"usage reply longer than {self._max_usage_lines} lines"
        elif is_usage_start(line):
            self._usage = [line]
        else:
            self._deliver(line)
        return ""

    def _deliver(self, line: str) -> None:
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():
            reply.set_result(line)
            return
        # The reply to a command whose waiter gave up: dropped, and the next
        # command may go. (With no command out at all, a line nobody asked for:
        # Asterisk never sends one, so it is ignored too.)
        owed, self.owed = self.owed, None
        if owed is not None and not owed.done():
            owed.set_result(None)

    def fail(self, exc: Exception) -> None:
        """No reply will come: whoever waits for one (or for an owed one) gets ``exc``."""
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():
            reply.set_exception(exc)
        owed, self.owed = self.owed, None
        if owed is not None and not owed.done():
            owed.set_exception(exc)
