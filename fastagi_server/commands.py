"""AGI commands, written so that no value can ever become a second command.

Asterisk splits a command line into arguments with ``parse_args`` in
``res/res_agi.c``: a double quote toggles quoting, a backslash makes the next
character literal, and spaces outside quotes separate arguments. Every value
we send is therefore wrapped in quotes with ``\\`` and ``"`` escaped.

Asterisk reads one command per line into a 2048-byte buffer: a longer line is
cut there and its tail read as a *second command*. So commands are bounded
below that, values are shortened to fit, and CR, LF, NUL (and the other
control characters) are never sent.

Each command is a network round trip, and Asterisk must answer one before it
reads the next, so several variables travel together in one ``EXEC MSet``
(:func:`set_variables`). Its data goes through a second parser, the
application argument splitter, which gets its own escaping
(:func:`app_argument`).
"""

from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

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


# MSet parses at most 99 application arguments and hands the 99th over unparsed.
MAX_MSET_PAIRS = 98
_MSET_PREFIX = "EXEC MSet "
# What Asterisk's application argument splitter (__ast_app_separate_args) treats
# specially: a backslash before each makes it literal.
_APP_ESCAPES = str.maketrans({ch: "\\" + ch for ch in '\\",()[]'})
_AGI_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
# A value free of these, and of at most _SHORT characters (so at most
# MAX_VALUE_BYTES of UTF-8), goes into MSet exactly as it is.
_NEEDS_CARE = re.compile(r'[\x00-\x1f\x7f\\",()\[\]$]')
_SHORT = MAX_VALUE_BYTES // 4


def clean(value: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """``value`` with control characters replaced by spaces, cut to ``max_bytes`` of UTF-8."""
    text = _CONTROL.sub(" ", value)
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", "ignore")
    return text


def quote(value: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """One AGI argument holding exactly ``clean(value)``."""
    return '"' + clean(value, max_bytes).translate(_AGI_ESCAPES) + '"'


def app_argument(text: str) -> str:
    """``text`` escaped for one pass of Asterisk's application argument splitter.

    ``MSet`` splits its data on commas with ``AST_STANDARD_APP_ARGS``, which
    drops quotes and backslashes and counts brackets (a stray ``(`` would
    swallow the following pairs); a backslash before each of those makes it a
    plain character. ``=`` needs nothing: the value is everything after the
    name's ``=``.
    """
    return text.translate(_APP_ESCAPES)


def check_variable_name(name: str) -> str:
    """``name``, if it is a channel variable name we send; else ValueError."""
    if not _is_variable_name(name):
        raise ValueError(f"not a channel variable name: {name!r}")
    return name


@functools.lru_cache(maxsize=1024)
def _is_variable_name(name: str) -> bool:
    # The contract's few names come back on every call: checked once each.
    return _VARIABLE_NAME.fullmatch(name) is not None


def set_variable(name: str, value: str) -> str:
    """``SET VARIABLE NAME "value"``."""
    return finish(f"SET VARIABLE {check_variable_name(name)} {quote(value)}")


def mset(pairs: list[tuple[str, str]]) -> str:
    """``EXEC MSet "N1=v1,N2=v2"``: up to 98 variables in one command.

    Each variable is set to ``clean(value)``; a value holding ``$`` is refused
    (see :func:`set_variables`, which sends those through ``SET VARIABLE``).
    """
    if not 1 <= len(pairs) <= MAX_MSET_PAIRS:
        raise ValueError(f"MSet takes 1 to {MAX_MSET_PAIRS} variables, got {len(pairs)}")
    return _mset_line([_mset_item(name, clean(value)) for name, value in pairs])


def set_variables(variables: Mapping[str, str]) -> list[str]:
    """The fewest commands that set every variable to ``clean(value)``.

    Values go together into ``EXEC MSet`` commands, each within
    :data:`MAX_COMMAND_BYTES`. A value holding ``$`` goes alone in a
    ``SET VARIABLE``: if the dialplan sets ``AGIEXECFULL=yes``, Asterisk
    substitutes ``${...}`` in EXEC data, so CRM text like ``${SHELL(...)}``
    would run on the PBX; ``SET VARIABLE`` never evaluates. A lone variable
    also goes in a ``SET VARIABLE``: the same one round trip, one parser fewer.
    """
    return _one_plain_mset(variables) or _batched(variables)


def _one_plain_mset(variables: Mapping[str, str]) -> list[str] | None:
    """The usual case, kept cheap: no value to clean, cut or escape, so the
    line is the pairs as they are. None when that does not hold."""
    values = list(variables.values())
    # '=' joins the values only so that one search looks at all of them: it is no special character.
    if not 1 < len(values) <= MAX_MSET_PAIRS or max(map(len, values)) > _SHORT or _NEEDS_CARE.search("=".join(values)):
        return None
    _check_variable_names(tuple(variables))
    line = _MSET_PREFIX + '"' + ",".join(map("=".join, variables.items())) + '"'
    return [line] if len(line.encode("utf-8")) <= MAX_COMMAND_BYTES else None


@functools.lru_cache(maxsize=64)
def _check_variable_names(names: tuple[str, ...]) -> None:
    # The contract's names come back together on every call: one check for all
    # of them (a call per name was about a fifth of building the line).
    for name in names:
        check_variable_name(name)


def _batched(variables: Mapping[str, str]) -> list[str]:
    """MSet lines filled up to the line limit; SET VARIABLE for the rest."""
    batches: list[list[tuple[str, str, str]]] = []  # (name, clean value, MSet item)
    singles: list[str] = []
    batch: list[tuple[str, str, str]] = []
    # Bytes of the MSet line so far: the prefix, the two quotes, the items and
    # a comma after each (one too many, hence the -1 below).
    empty = size = len(_MSET_PREFIX) + 2
    for name, value in variables.items():
        text = clean(value)
        if "$" in text:
            singles.append(set_variable(name, text))
            continue
        item = _mset_item(name, text)
        cost = len(item.encode("utf-8")) + 1
        if batch and (size + cost - 1 > MAX_COMMAND_BYTES or len(batch) == MAX_MSET_PAIRS):
            batches.append(batch)
            batch, size = [], empty
        if empty + cost - 1 > MAX_COMMAND_BYTES:  # too long even alone: SET VARIABLE escapes once only
            singles.append(set_variable(name, text))
            continue
        batch.append((name, text, item))
        size += cost
    if batch:
        batches.append(batch)
    lines = [set_variable(b[0][0], b[0][1]) if len(b) == 1 else _mset_line([item for _, _, item in b]) for b in batches]
    return lines + singles


def _mset_item(name: str, text: str) -> str:
    """``NAME=value`` escaped for the application splitter, then for the AGI parser."""
    if "$" in text:
        raise ValueError("EXEC data must not hold '$': with AGIEXECFULL=yes Asterisk would evaluate it")
    return (check_variable_name(name) + "=" + app_argument(text)).translate(_AGI_ESCAPES)


def _mset_line(items: list[str]) -> str:
    # The items are clean and escaped and their length counted: only the bound is checked again.
    return bounded(_MSET_PREFIX + '"' + ",".join(items) + '"')


def get_variable(name: str) -> str:
    """``GET VARIABLE NAME``."""
    return finish(f"GET VARIABLE {check_variable_name(name)}")


# The same few devices are asked about on every call: each question is written once.
@functools.lru_cache(maxsize=1024)
def get_full_variable(expression: str) -> str:
    """``GET FULL VARIABLE ${EXPR}``: only simple ``${NAME}`` / ``${FUNC(args)}`` forms."""
    if not _EXPRESSION.fullmatch(expression):
        raise ValueError(f"not a variable expression we send: {expression!r}")
    return finish(f"GET FULL VARIABLE {quote(expression)}")


def get_full_variables(expressions: Sequence[str], separator: str) -> str:
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
    return bounded(command)


def bounded(command: str) -> str:
    """``command``, if it fits Asterisk's line buffer; else ValueError."""
    if len(command) > MAX_COMMAND_BYTES // 4 and len(command.encode("utf-8")) > MAX_COMMAND_BYTES:
        raise ValueError(f"a command must be shorter than {MAX_COMMAND_BYTES} bytes")
    return command
