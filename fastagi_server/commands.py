"""AGI commands, written so that no value can ever become a second command.

Asterisk splits a command line into arguments with ``parse_args`` in
``res/res_agi.c``: a double quote toggles quoting, a backslash makes the next
character literal, and spaces outside quotes separate arguments. Every value
we send is therefore wrapped in quotes with ``\\`` and ``"`` escaped.

Asterisk reads one command per line into a 2048-byte buffer: a longer line is
cut there and its tail read as a *second command*. So commands are bounded
below that, values are shortened to fit, and CR, LF, NUL (and the other
control characters) are never sent.
"""

from __future__ import annotations

import re

# res_agi.c reads commands into char buf[AGI_BUF_LEN] with AGI_BUF_LEN 2048,
# which holds 2047 bytes and the newline terminator... minus the NUL.
MAX_COMMAND_BYTES = 2046
# A single variable's value is cut to this many bytes (before quoting).
MAX_VALUE_BYTES = 512

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")
# ${NAME}, or a read-only function we use: ${DEVICE_STATE(PJSIP/101)}, ${CALLERID(num)},
# optionally cut to a substring by Asterisk itself: ${CRM_RECORD_ID:0:64}.
_EXPRESSION = re.compile(
    r"\$\{(?:[A-Za-z_][A-Za-z0-9_]*"
    r"|(?:DEVICE_STATE|EXTENSION_STATE|CALLERID|CHANNEL|CDR)\([A-Za-z0-9_/:@.,+*#-]*\))"
    r"(?::[0-9]{1,4}(?::[0-9]{1,4})?)?\}"
)
# What separates several expressions read in one GET FULL VARIABLE: literal
# text Asterisk leaves alone (no $, braces, quotes, backslash or spaces).
_SEPARATOR = re.compile(r"[|~^!%=;<>]{1,8}")


def clean(value: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """``value`` with control characters replaced by spaces, cut to ``max_bytes`` of UTF-8."""
    text = _CONTROL.sub(" ", value)
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", "ignore")
    return text


def quote(value: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """One AGI argument holding exactly ``clean(value)``."""
    text = clean(value, max_bytes)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_variable_name(name: str) -> str:
    if not _VARIABLE_NAME.fullmatch(name):
        raise ValueError(f"not a channel variable name: {name!r}")
    return name


def set_variable(name: str, value: str) -> str:
    """``SET VARIABLE NAME "value"``."""
    return finish(f"SET VARIABLE {check_variable_name(name)} {quote(value)}")


def get_variable(name: str) -> str:
    """``GET VARIABLE NAME``."""
    return finish(f"GET VARIABLE {check_variable_name(name)}")


def get_full_variable(expression: str) -> str:
    """``GET FULL VARIABLE ${EXPR}``: only simple ``${NAME}`` / ``${FUNC(args)}`` forms."""
    if not _EXPRESSION.fullmatch(expression):
        raise ValueError(f"not a variable expression we send: {expression!r}")
    return finish(f"GET FULL VARIABLE {quote(expression)}")


def get_full_variables(expressions: list[str], separator: str) -> str:
    """``GET FULL VARIABLE "${A}|~|${B}"``: several allowed expressions in one round trip."""
    if not expressions or not _SEPARATOR.fullmatch(separator):
        raise ValueError(f"not a separator we send: {separator!r}")
    for expression in expressions:
        if not _EXPRESSION.fullmatch(expression):
            raise ValueError(f"not a variable expression we send: {expression!r}")
    return finish(f"GET FULL VARIABLE {quote(separator.join(expressions), MAX_COMMAND_BYTES)}")


def verbose(message: str, level: int = 1) -> str:
    """``VERBOSE "message" level``."""
    return finish(f"VERBOSE {quote(message)} {max(1, min(int(level), 4))}")


def finish(command: str) -> str:
    """Check a whole command line; raise ValueError if it could be split by Asterisk."""
    if _CONTROL.search(command):
        raise ValueError("a command must not contain control characters")
    if len(command.encode("utf-8")) > MAX_COMMAND_BYTES:
        raise ValueError(f"a command must be shorter than {MAX_COMMAND_BYTES} bytes")
    return command
