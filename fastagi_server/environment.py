"""The ``agi_*`` header block Asterisk sends at the start of every AGI session."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import methodcaller
from urllib.parse import parse_qsl

from .errors import AgiProtocolError

# Asterisk writes these when it has no value.
_NO_VALUE = frozenset({"", "unknown"})


@dataclass(frozen=True)
class AgiEnvironment:
    """A parsed header block. ``headers`` keeps every key as sent, unknown ones too."""

    headers: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str:
        """The value of ``agi_<key>``, or empty."""
        return self.headers.get("agi_" + key, "")

    @property
    def network_script(self) -> str:
        """``route?x=1`` for ``AGI(agi://host/route?x=1)``."""
        script = self.get("network_script")
        if not script:
            # Older Asterisk and some test clients send only the request URL.
            request = self.get("request")
            if "://" in request:
                script = request.split("://", 1)[1].partition("/")[2]
        return script.lstrip("/")

    @property
    def script(self) -> str:
        """The handler name: the script path without its query."""
        return self.network_script.partition("?")[0].strip("/")

    @property
    def query(self) -> dict[str, str]:
        """The script's query arguments (``?did=123&x=1``)."""
        query = self.network_script.partition("?")[2]
        return dict(parse_qsl(query, keep_blank_values=True)) if query else {}

    @property
    def arguments(self) -> tuple[str, ...]:
        """``agi_arg_1``, ``agi_arg_2`` ... in order."""
        args = []
        n = 1
        while ("agi_arg_%d" % n) in self.headers:
            args.append(self.headers["agi_arg_%d" % n])
            n += 1
        return tuple(args)

    @property
    def request(self) -> str:
        """The request URL, ``agi://host:port/route?x=1``."""
        return self.get("request")

    @property
    def channel(self) -> str:
        """``PJSIP/trunk-00000001``."""
        return self.get("channel")

    @property
    def unique_id(self) -> str:
        """The channel's unique id."""
        return self.get("uniqueid")

    @property
    def caller_id(self) -> str:
        """The caller ID number as sent (may be ``unknown``)."""
        return self.get("callerid")

    @property
    def caller_id_name(self) -> str:
        """The caller ID name."""
        return self.get("calleridname")

    @property
    def dnid(self) -> str:
        """The dialled number, ``unknown`` over Local channels."""
        return self.get("dnid")

    @property
    def rdnis(self) -> str:
        """The redirecting number."""
        return self.get("rdnis")

    @property
    def context(self) -> str:
        """The dialplan context."""
        return self.get("context")

    @property
    def extension(self) -> str:
        """The dialplan extension."""
        return self.get("extension")

    @property
    def priority(self) -> str:
        """The dialplan priority."""
        return self.get("priority")

    @property
    def language(self) -> str:
        """The channel's language."""
        return self.get("language")

    @property
    def type(self) -> str:
        """The channel technology."""
        return self.get("type")

    @property
    def version(self) -> str:
        """The Asterisk version."""
        return self.get("version")

    @property
    def caller_number(self) -> str:
        """The caller ID number, empty when Asterisk has none."""
        value = self.caller_id
        return "" if value.lower() in _NO_VALUE else value

    @property
    def did(self) -> str:
        """The number the caller dialled, as far as the headers tell.

        A ``did`` query argument wins; then the DNID; over a Local channel the
        DNID is ``unknown`` and the dialled number is the extension.
        """
        explicit = self.query.get("did")
        if explicit:
            return explicit
        if self.dnid.lower() not in _NO_VALUE:
            return self.dnid
        return self.extension


def parse_header_line(line: str) -> tuple[str, str]:
    """``agi_callerid: 123`` -> ``("agi_callerid", "123")``. Empty values are allowed."""
    key, sep, value = line.partition(":")
    key = key.strip()
    if not sep or not key or " " in key:
        raise AgiProtocolError(f"malformed header line {line[:80]!r}")
    # Asterisk writes "key: value"; strip exactly that separator space.
    return key, value[1:] if value.startswith(" ") else value


_SPLIT_AT_SEPARATOR = methodcaller("split", ": ", 1)


def parse_header_block(block: str) -> dict[str, str]:
    """The header lines of a block (without its empty last line), LF or CRLF, into a dict.

    Raises :class:`AgiProtocolError` naming the first malformed line, or the
    first key sent twice: Asterisk never repeats one, so a repeat is a value
    that smuggled a line break (a caller name ``Eve\nagi_network_script:
    outcome``) and must not override what Asterisk said.
    """
    if not block:
        return {}
    lines = block.split("\n")
    if "\r" in block:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    # The usual block, every line ``agi_name: value``, in one pass at C speed
    # (this runs for every call); parse_header_line has the last word on anything else.
    try:
        headers = dict(map(_SPLIT_AT_SEPARATOR, lines))
    except ValueError:  # a line without ": "
        headers = None
    if headers is None or not all(map(str.isidentifier, headers)):
        headers = dict(map(parse_header_line, lines))
    if len(headers) != len(lines):
        raise AgiProtocolError(f"header {repeated_key(lines)!r} sent twice in one header block")
    return headers


def repeated_key(lines: list[str]) -> str:
    """The first key of ``lines`` that an earlier line already had ("" when none is)."""
    seen = set()
    for line in lines:
        key = parse_header_line(line)[0]
        if key in seen:
            return key
        seen.add(key)
    return ""
