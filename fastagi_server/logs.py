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
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, Mapping, TextIO

if TYPE_CHECKING:
    import asyncio

# Control characters (C0, DEL, C1: U+0085 among them) and the Unicode line and
# paragraph separators: every character str.splitlines() breaks a line at.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Keys (addresses, reasons) a summary line names, the most frequent first.
SUMMARY_KEYS = 5


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (``server.log_format = "json"``).

    ``time``, ``level``, ``logger``, and ``message``; a call's line carries its
    fields as keys of their own instead (``event``: ``call``), so a shipper
    needs no key=value parser. Every line separator inside a value is escaped
    as JSON (:func:`escape_log_text` covers what ``json`` leaves raw).
    """

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, object] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        fields = getattr(record.args[0], "fields", None) if isinstance(record.args, tuple) and len(record.args) == 1 else None
        if isinstance(fields, Mapping):  # a call's line (calllog.CallFields)
            entry["event"] = str(record.msg).split(" ", 1)[0]
            entry.update((key, value) for key, value in fields.items() if value is not None and value != "")
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return escape_log_text(json.dumps(entry, ensure_ascii=False, default=str))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{moment}.{int(record.msecs):03d}Z"


def configure_logging(level: int | str, format: str, stream: TextIO, *, as_json: bool = False) -> None:
    """Send every log record to ``stream`` through :class:`EscapingFormatter` (or
    :class:`JsonFormatter` with ``as_json``).

    Like :func:`logging.basicConfig`, it does nothing when the root logger
    already has a handler (a host program's, a test runner's).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if as_json else EscapingFormatter(format))
    logging.basicConfig(level=level, handlers=[handler])


class RepeatedWarning:
    """One kind of warning that a peer can make come by the thousand (refused
    peers, ended sessions, failed accepts): the first ``burst`` of each
    ``interval_s`` are logged as they come, the rest counted and told in one
    summary line per interval, with a count per ``key`` (a peer's address, a reason).

    The summary is written when the interval ends (on the running event loop's
    timer), or with the next warning after it when no loop runs.
    """

    def __init__(
        self,
        logger: logging.Logger,
        kind: str,
        *,
        burst: int = 10,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self._kind = kind
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._window_ends = 0.0
        self._logged = 0
        self._held: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self.count = 0  # every warning since the start, logged or held (the server's metrics read it)

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log ``message % args`` now, or count it under ``key`` for the summary."""
        self.count += 1
        now = self._clock()
        if now >= self._window_ends:
            self.flush()
            self._window_ends = now + self._interval_s
            self._logged = 0
        if self._logged < self._burst:
            self._logged += 1
            self._logger.warning(message, *args)
            return
        self._held[key] += 1
        if self._timer is None:
            self._schedule(self._window_ends - now)

    def _schedule(self, delay: float) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a process AGI): the next warning after the interval writes the summary
        self._timer = loop.call_later(max(0.0, delay), self.flush)

    def flush(self) -> None:
        """Write the summary of what was held back, if anything was."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._held:
            return
        held, self._held = self._held, Counter()
        keys = ", ".join(f"{key} x{count}" for key, count in held.most_common(SUMMARY_KEYS))
        more = f" and {len(held) - SUMMARY_KEYS} more" if len(held) > SUMMARY_KEYS else ""
        self._logger.warning(
            "%s: %d more in the last %.0f s, not logged one by one (%s%s)",
            self._kind, sum(held.values()), self._interval_s, keys, more,
        )
