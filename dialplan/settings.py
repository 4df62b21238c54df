"""Routing policy settings (the ``[routing]`` section of ``crmroute.toml``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from crmlookup.phone import is_valid_region
from crmlookup.records import MODULES

from .targets import validate_dial_template


@dataclass(frozen=True)
class RoutingSettings:
    """How a caller's CRM owner becomes a dial target.

    Every field has a default that works with the demo directory.
    """

    # The decision comes back within this many milliseconds, whatever the CRM does.
    deadline_ms: int = 1500
    # Region (ISO 3166 code) for caller IDs without a country code.
    default_region: str = "US"
    # Which CRM modules decide the owner, first match wins.
    lookup_order: tuple[str, ...] = ("Leads", "Deals", "Contacts", "Accounts")
    # How an extension becomes a dial string; ``{ext}`` is replaced.
    dial_template: str = "PJSIP/{ext}"
    # Only extensions matching this (whole) pattern are ever dialled.
    extension_pattern: str = r"[0-9A-Za-z_-]{1,32}"
    # Owner id or email -> extensions; wins over extensions the CRM knows.
    owner_extensions: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 10 <= self.deadline_ms <= 60_000:
            raise ValueError(f"deadline_ms must be between 10 and 60000, got {self.deadline_ms}")
        if not is_valid_region(self.default_region):
            raise ValueError(f"default_region {self.default_region!r} is not a known region code (e.g. US, GB, ES)")
        object.__setattr__(self, "default_region", self.default_region.upper())
        if not self.lookup_order:
            raise ValueError("lookup_order must name at least one module")
        for module in self.lookup_order:
            if module not in MODULES:
                raise ValueError(f"lookup_order: {module!r} is not one of {', '.join(MODULES)}")
        try:
            re.compile(self.extension_pattern)
        except re.error as exc:
            raise ValueError(f"extension_pattern is not a valid regular expression: {exc}") from None
        validate_dial_template(self.dial_template)
        # Emails compare case-insensitively; ids exactly.
        normalised = {}
        for key, extensions in self.owner_extensions.items():
            normalised[key.lower() if "@" in key else key] = tuple(extensions)
        object.__setattr__(self, "owner_extensions", normalised)
