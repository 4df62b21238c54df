"""Dial strings, built only from validated extensions.

CRM text never reaches a dial string: an extension is dialled only if it
matches both the admin's pattern and a fixed safe alphabet, so no value can
add a second target (``&``), a Dial option (``,``) or anything else.
"""

from __future__ import annotations

import re
from typing import Iterable

from crmlookup.extensions import SAFE_EXTENSION

__all__ = ["SAFE_EXTENSION", "SAFE_TARGET", "SAFE_TEMPLATE", "DialTargets", "validate_dial_template"]
# What a template may contain around ``{ext}``: a technology and, for Local
# channels, a context.
SAFE_TEMPLATE = re.compile(r"(PJSIP|SIP|IAX2|Local|DAHDI|Custom)/[A-Za-z0-9_.@/-]*\{ext\}[A-Za-z0-9_.@/-]*")
# Every valid dial string: one or more targets joined by '&'.
_TARGET = r"[A-Za-z0-9]+/[0-9A-Za-z_.+*#@/-]+"
SAFE_TARGET = re.compile(rf"{_TARGET}(&{_TARGET})*")


def validate_dial_template(template: str) -> None:
    """Raise ValueError unless ``template`` is a safe dial-string template."""
    if template.count("{ext}") != 1 or not SAFE_TEMPLATE.fullmatch(template):
        raise ValueError(
            f"dial_template {template!r} must be like 'PJSIP/{{ext}}' or 'Local/{{ext}}@context' "
            "(one {ext}; letters, digits, _ . @ / - only)"
        )


class DialTargets:
    """Turns extensions into a dial string, keeping only the valid ones."""

    def __init__(self, template: str, extension_pattern: str):
        validate_dial_template(template)
        self._template = template
        self._pattern = re.compile(extension_pattern)

    def is_valid(self, extension: str) -> bool:
        """True when ``extension`` may be dialled."""
        return bool(SAFE_EXTENSION.fullmatch(extension) and self._pattern.fullmatch(extension))

    def valid_extensions(self, extensions: Iterable[str]) -> list[str]:
        """The valid extensions, in order, without repeats."""
        seen: dict[str, None] = {}
        for extension in extensions:
            if self.is_valid(extension):
                seen.setdefault(extension, None)
        return list(seen)

    def dial_string(self, extensions: Iterable[str]) -> str:
        """``PJSIP/101&PJSIP/102`` for the valid extensions; empty if none."""
        targets = "&".join(self._template.replace("{ext}", ext) for ext in self.valid_extensions(extensions))
        if targets and not SAFE_TARGET.fullmatch(targets):  # defence in depth: never reached with a valid template
            return ""
        return targets
