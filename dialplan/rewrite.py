"""Caller-number rewriting per policy, before the number is normalised.

Trunks present caller IDs their own way: with the outside-line ``0`` a PBX
dials out with (``0928000000``), with a carrier's prefix, or as E.164 digits
without the ``+``. A policy says what to take off (``strip_prefixes``, the
longest that matches, once) and what to put in front (``add_prefix``), as
FreePBX and 3CX let an admin do for their trunks. A number that already
starts with ``+`` is complete and never rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = re.compile(r"[0-9]{1,10}")
_ADDED = re.compile(r"\+?[0-9]{0,10}")
# A prefix is stripped only if at least this many characters are left: a
# short internal number is never eaten whole.
MIN_DIGITS_LEFT = 3


@dataclass(frozen=True)
class NumberRewrite:
    """What a policy does to a caller's number before reading it."""

    strip_prefixes: tuple[str, ...] = ()  # longest first
    add_prefix: str = ""

    @classmethod
    def build(cls, strip_prefixes: tuple[str, ...], add_prefix: str) -> NumberRewrite:
        """Check and order the rules; raises ValueError naming the key."""
        for index, prefix in enumerate(strip_prefixes):
            if not _PREFIX.fullmatch(prefix):
                raise ValueError(f"strip_prefixes[{index}]: {prefix!r} is not a prefix of digits (e.g. \"0\", \"00\")")
        if not _ADDED.fullmatch(add_prefix):
            raise ValueError(f"add_prefix: {add_prefix!r} is not digits, with a leading + or not (e.g. \"+34\", \"0\")")
        return cls(tuple(sorted(set(strip_prefixes), key=len, reverse=True)), add_prefix)

    def __bool__(self) -> bool:
        return bool(self.strip_prefixes or self.add_prefix)

    def apply(self, raw: str) -> str:
        """``raw`` as the policy reads it: ``0928000000`` -> ``928000000`` with ``strip_prefixes = ["0"]``."""
        text = raw.strip()
        if not self or not text or text.startswith("+"):
            return raw
        for prefix in self.strip_prefixes:
            if text.startswith(prefix) and len(text) - len(prefix) >= MIN_DIGITS_LEFT:
                text = text[len(prefix):]
                break
        return self.add_prefix + text

    def describe(self) -> str:
        """The rules, as --explain shows them."""
        parts = []
        if self.strip_prefixes:
            parts.append(f"strip_prefixes {list(self.strip_prefixes)}")
        if self.add_prefix:
            parts.append(f"add_prefix {self.add_prefix!r}")
        return ", ".join(parts)
