"""Log lines that text from callers and CRMs cannot forge.

A caller ID, a unique id or a CRM name may hold a line break: CR, LF, but
also U+0085, U+2028 and U+2029, which many log viewers and line splitters
treat as one. Written raw, such a value starts a line of its own choosing
(``... status=OWNER``). :func:`escape_log_text` is the one place that makes
text safe for a log line; every record our handlers write passes through it
(:class:`EscapingFormatter`), and the per-call line quotes its values with it.
"""

from __future__ import annotations

import logging
import re
from typing import TextIO

# Control characters (C0, DEL, C1: U+0085 among them) and the Unicode line and
# paragraph separators: every character str.splitlines() breaks a line at.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_log_text(text: str) -> str:
    """``text`` with each control or line-separator character written as a
    JSON escape (``\\n``, ``\\u2028``): one line, read back by ``json.loads``."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_character, text)


def _escape_character(match: re.Match[str]) -> str:
    character = match.group()
    return _SHORT_ESCAPES.get(character) or f"\\u{ord(character):04x}"


class EscapingFormatter(logging.Formatter):
    """Formats a record with its message escaped (see :func:`escape_log_text`).

    A traceback, when there is one, keeps its own lines: it follows the message.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_log_text(record.message)
        return super().formatMessage(record)


def configure_logging(level: int | str, format: str, stream: TextIO) -> None:
    """Send every log record to ``stream`` through :class:`EscapingFormatter`.

    Like :func:`logging.basicConfig`, it does nothing when the root logger
    already has a handler (a host program's, a test runner's).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(format))
    logging.basicConfig(level=level, handlers=[handler])
