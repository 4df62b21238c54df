"""Replies to AGI commands: ``200 result=N (data) endpos=M`` and the error codes."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .errors import AgiDeadChannel, AgiInvalidCommand, AgiProtocolError, AgiUsageError

_RESULT = re.compile(r"200 result=(-?\d+)(?: \((.*)\))?(?: endpos=(-?\d+))?\s*$", re.DOTALL)


@dataclass(frozen=True)
class AgiReply:
    """A successful (``200``) reply."""

    result: int
    data: str | None = None  # the text in parentheses, if any
    endpos: int | None = None
    line: str = ""


# Asterisk gives the same few replies call after call ("200 result=0", a
# device's state): each is parsed once. Replies are frozen, so sharing is safe.
@functools.lru_cache(maxsize=256)
def parse_reply(line: str) -> AgiReply:
    """Parse one reply line, or raise the named error for 510, 511 and 520.

    The data in parentheses may itself contain parentheses (a variable's value
    is sent as is), so it runs to the last ``)``.
    """
    if line.startswith("200 "):
        match = _RESULT.match(line)
        if match is None:
            raise AgiProtocolError(f"unreadable reply {line[:80]!r}")
        result, data, endpos = match.groups()
        return AgiReply(int(result), data, int(endpos) if endpos is not None else None, line)
    if line.startswith("510"):
        raise AgiInvalidCommand(line[4:] or "Invalid or unknown command")
    if line.startswith("511"):
        raise AgiDeadChannel(line[4:] or "Command Not Permitted on a dead channel or intercept routine")
    if line.startswith("520"):
        raise AgiUsageError(line[4:])
    raise AgiProtocolError(f"unexpected reply {line[:80]!r}")


def is_usage_start(line: str) -> bool:
    """``520-...`` opens a multi-line usage block ending with a ``520 ...`` line."""
    return line.startswith("520-")


def is_usage_end(line: str) -> bool:
    return line.startswith("520 ")
