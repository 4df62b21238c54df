"""Phone-number normalisation: the one place that turns caller IDs into numbers.

Everything that compares numbers (the local directory's index, a CRM search)
goes through :func:`normalise`, so a number typed ``928 00 00 00`` in the CRM
and a caller ID of ``+34928000000`` meet on the same E.164 form.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers

# Caller IDs longer than this are not phone numbers; refusing them early keeps
# hostile input away from the parser.
MAX_NUMBER_LENGTH = 40

# Asterisk and carriers put these in the caller ID when the number is withheld.
WITHHELD = frozenset({"", "unknown", "anonymous", "private", "restricted", "unavailable", "withheld"})

_FORMATTING = re.compile(r"[\s().\-/]")


class InvalidNumber(ValueError):
    """The text is not a phone number we could route on."""


@dataclass(frozen=True)
class PhoneNumber:
    """A caller's number in the forms the lookups need."""

    raw: str
    e164: str  # +34928000000
    country_code: int  # 34
    national: str  # 928000000: the national significant number
    national_prefix: str  # the region's trunk prefix ("0" in GB, "" in ES)

    def variants(self) -> list[str]:
        """The forms a CRM may have stored this number in, most likely first.

        E.164 with and without ``+``, the national number with and without the
        trunk prefix, and the international form with ``00``.
        """
        forms = [
            self.e164,
            self.e164[1:],
            self.national,
            self.national_prefix + self.national if self.national_prefix else "",
            "00" + self.e164[1:],
        ]
        seen: dict[str, None] = {}
        for form in forms:
            if form:
                seen.setdefault(form, None)
        return list(seen)


def is_withheld(raw: str) -> bool:
    """True when the caller ID carries no number at all."""
    return raw.strip().lower() in WITHHELD


# Parsing is the costliest step of a lookup and the same caller IDs come back
# call after call: remember the last few thousand (errors are not remembered).
@functools.lru_cache(maxsize=4096)
def normalise(raw: str, region: str) -> PhoneNumber:
    """Parse ``raw`` (caller ID or CRM text) relative to ``region`` (ISO 3166, e.g. ``ES``).

    Raises :class:`InvalidNumber` for withheld numbers and anything that is not a
    possible phone number.
    """
    text = raw.strip()
    if is_withheld(text):
        raise InvalidNumber("caller number withheld")
    if len(text) > MAX_NUMBER_LENGTH:
        raise InvalidNumber(f"longer than {MAX_NUMBER_LENGTH} characters")
    compact = _FORMATTING.sub("", text)
    if not compact or not re.fullmatch(r"\+?[0-9]+", compact):
        raise InvalidNumber(f"not a phone number: {raw!r}")
    try:
        parsed = phonenumbers.parse(compact, region.upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"not a phone number: {raw!r}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"not a possible number: {raw!r}")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    region_of_number = phonenumbers.region_code_for_number(parsed)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region_of_number or "")
    national_prefix = (metadata.national_prefix or "") if metadata else ""
    national = e164[1 + len(str(parsed.country_code)):]
    return PhoneNumber(
        raw=raw,
        e164=e164,
        country_code=parsed.country_code,
        national=national,
        national_prefix=national_prefix,
    )


def is_valid_region(region: str) -> bool:
    """True for a region code phonenumbers knows (``ES``, ``GB``, ``US`` ...)."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS
