"""Bounds on what a peer can make a session do (the ``[limits]`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from crmlookup.settings import bounded, check_bounds


@dataclass(frozen=True)
class SessionLimits:
    """Each limit ends the session with one log line naming the peer and the reason.

    Asterisk has no timeout of its own on a silent FastAGI server: the caller
    waits as long as we do, so these keep the wait short.
    """

    # Longest line (header or reply) accepted, in bytes.
    max_line_bytes: int = bounded(4096, 256, 1 << 20)
    # Most header lines in one block (Asterisk sends about 25 plus one per argument).
    max_headers: int = bounded(256, 32, 100_000)
    # Time for the whole header block to arrive after the connection opens.
    header_timeout_ms: int = bounded(2000, 10, 600_000)
    # Time for Asterisk to answer one command.
    reply_timeout_ms: int = bounded(2000, 10, 600_000)
    # Time for the whole session, from connect to close.
    session_timeout_ms: int = bounded(10000, 100, 3_600_000)

    def __post_init__(self) -> None:
        check_bounds(self)


# How each limit's reason begins (the session's log line), and the setting it comes from.
_REASON_PREFIXES = (
    ("line longer than", "max_line_bytes"),
    ("more than", "max_headers"),
    ("usage reply longer than", "max_headers"),
    ("no complete header block within", "header_timeout_ms"),
    ("no reply to", "reply_timeout_ms"),
    ("session longer than", "session_timeout_ms"),
)


def limit_name(reason: str) -> str:
    """The setting behind a limit's reason (``header_timeout_ms``...), a bounded metric label; "other" if none."""
    for prefix, name in _REASON_PREFIXES:
        if reason.startswith(prefix):
            return name
    return "other"
