"""One structured log line per call, in ``key=value`` form.

Values are JSON-quoted when they hold spaces, quotes or control characters,
and every control or line-separator character is escaped
(:func:`.logs.escape_log_text`), so a caller name with a newline, a U+2028 or
a U+0085 cannot forge a second log line.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Mapping

from .logs import escape_log_text

if TYPE_CHECKING:
    from .session import AgiSession

call_logger = logging.getLogger("crmroute.call")

# Values made only of these are written bare; anything else is JSON-quoted.
_PLAIN = re.compile(r"[A-Za-z0-9+\-_./:@&\[\]]+")


# Rendered ``key=value`` parts by (key, value): most of a call's fields (status,
# target, owner, names, reason, chain) repeat from call to call, and rendering one
# (a pattern match, JSON quoting, escaping) costs more than finding it again.
# Bounded: emptied when full, so values seen once (unique ids, ports) cannot grow it.
_RENDERED: dict[tuple[str, str], str] = {}
_RENDERED_MAX = 4096


def format_fields(fields: Mapping[str, object]) -> str:
    """``a=1 b="two words"``, skipping empty values."""
    # A plain loop rather than a generator calling a helper per field: this
    # runs for every call, and it halves the cost (about 4 us of 9 per line).
    parts = []
    rendered = _RENDERED
    for key, value in fields.items():
        if value is None or value == "":
            continue
        text = value if type(value) is str else str(value)
        part = rendered.get((key, text))
        if part is None:
            part = f"{key}={text}" if _PLAIN.fullmatch(text) else f"{key}={_quoted(text)}"
            if len(rendered) >= _RENDERED_MAX:
                rendered.clear()
            rendered[key, text] = part
        parts.append(part)
    return " ".join(parts)


def _quoted(text: str) -> str:
    # json.dumps(text, ensure_ascii=False) without its set-up (imported here so
    # a process AGI, which logs no calls, never loads json); JSON leaves DEL,
    # U+0085, U+2028 and U+2029 raw, so the one log escape follows.
    from json.encoder import encode_basestring

    return escape_log_text(encode_basestring(text))


class CallFields:
    """A call's fields as the log record's argument: ``key=value`` text when a text log writes
    the line (:func:`format_fields`, as before), the fields themselves for a JSON log."""

    __slots__ = ("fields",)

    def __init__(self, fields: Mapping[str, object]):
        self.fields = fields

    def __str__(self) -> str:
        return format_fields(self.fields)


def session_fields(session: AgiSession) -> dict[str, str]:
    """What identifies a call in the log: script, unique id, caller, DID, peer."""
    env = getattr(session, "env", None)
    if env is None:
        return {"peer": session.peer}
    return {"script": session.script, "uniqueid": env.unique_id, "caller": env.caller_id, "peer": session.peer}


def skip_unused_record_fields() -> None:
    """Stop the logging module collecting, for every record, what our log format
    never shows: the caller's source line (a stack walk), thread and process.

    These are the switches the logging documentation names for this
    (``logging._srcfile`` and the ``log*`` flags); a server writes one record per call.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_call(session: AgiSession, result: Mapping[str, object], ms: float) -> None:
    """The one line for a call that was answered."""
    if call_logger.isEnabledFor(logging.INFO):
        fields = {**session_fields(session), **result, "ms": f"{ms:.1f}"}
        call_logger.info("call %s", CallFields(fields))


def log_session_error(session: AgiSession, reason: str, ms: float | None = None) -> None:
    """The one line for a session that ended early (a limit, a protocol error, a closed peer)."""
    fields: dict[str, object] = {**session_fields(session), "error": reason}
    if ms is not None:
        fields["ms"] = f"{ms:.1f}"
    repeats = session.ended_log
    if repeats is None:
        call_logger.warning("session-ended %s", format_fields(fields))
    else:  # a server: a flood of them (silent peers, say) is summarised
        repeats.warning(reason, "session-ended %s", format_fields(fields))
