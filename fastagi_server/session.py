"""An AGI session as handlers see it: the caller's headers and a few commands.

The same handlers run over FastAGI (TCP, :mod:`.connection`) and classic
stdio AGI (:mod:`.stdio`); each transport implements :meth:`AgiSession._exchange`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

from . import commands
from .environment import AgiEnvironment
from .logs import RepeatedWarning
from .replies import AgiReply, parse_reply


class AgiSession(ABC):
    """One AGI conversation with Asterisk: one command, one reply, never pipelined."""

    env: AgiEnvironment
    # The handler to run (``route``) and its arguments: from the request URL and
    # ``agi_arg_N`` over FastAGI, from the command line for a process AGI.
    script: str = ""
    arguments: tuple[str, ...] = ()
    peer: str = ""
    # Set once Asterisk reports the caller hung up (the ``HANGUP`` line or SIGHUP).
    # Variables can still be set on the dead channel; most other commands fail.
    hung_up: bool = False
    # Set once the handler started setting channel variables (the contract, or the
    # fallback): from then on no fallback may override what it sent.
    answered: bool = False
    # Set when the server cancels the handler and wants the fallback answer given first (stopping now).
    fallback_on_cancel: bool = False
    # Where the server counts repeated "session-ended" lines (None: each is logged).
    ended_log: RepeatedWarning | None = None

    @abstractmethod
    async def _exchange(self, command: str) -> str:
        """Send one command line and return its reply line.

        A multi-line ``520`` usage reply comes back joined with newlines. A
        caller may stop waiting (be cancelled); the command's reply is then
        still read, before the next command is sent.
        """

    async def command(self, command: str) -> AgiReply:
        """Send a raw, already-quoted command (see :mod:`.commands`)."""
        return parse_reply(await self._exchange(command))

    async def set_variable(self, name: str, value: str) -> None:
        """Set a channel variable; works on a dead channel too."""
        await self.command(commands.set_variable(name, value))

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        """Set several channel variables in as few round trips as is safe.

        Usually one ``EXEC MSet`` (see :func:`.commands.set_variables`); it works
        on a dead channel too, like ``SET VARIABLE``.
        """
        self.answered = True
        for command in commands.set_variables(variables):
            await self.command(command)

    async def get_variable(self, name: str) -> str | None:
        """A channel variable's value, or None when it is not set."""
        reply = await self.command(commands.get_variable(name))
        return reply.data if reply.result == 1 else None

    async def get_full_variable(self, expression: str) -> str | None:
        """Evaluate ``${...}`` on the channel (e.g. ``${DEVICE_STATE(PJSIP/101)}``)."""
        reply = await self.command(commands.get_full_variable(expression))
        return reply.data if reply.result == 1 else None

    async def get_full_variables(self, expressions: Sequence[str], separator: str = "|~|") -> list[str] | None:
        """Evaluate several expressions in one round trip; None when the values cannot be told apart.

        A value containing ``separator`` makes the split ambiguous: the caller
        then reads the expressions one by one.
        """
        reply = await self.command(commands.get_full_variables(expressions, separator))
        values = (reply.data or "").split(separator) if reply.result == 1 else [""] * len(expressions)
        return values if len(values) == len(expressions) else None

    async def verbose(self, message: str, level: int = 1) -> None:
        """Write to the Asterisk console at ``level``."""
        await self.command(commands.verbose(message, level))
