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

from .errors import CrmrouteError

# Caller IDs longer than this are not phone numbers; refusing them early keeps
# hostile input away from the parser.
MAX_NUMBER_LENGTH = 40

# Asterisk and carriers put these in the caller ID when the number is withheld.
WITHHELD = frozenset({"", "unknown", "anonymous", "private", "restricted", "unavailable", "withheld"})

_FORMATTING = re.compile(r"[\s().\-/]")


class InvalidNumber(CrmrouteError, ValueError):
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
        """The compact forms a CRM may have stored this number in, most likely first.

        E.164 with and without ``+``, the national number with and without the
        trunk prefix, and the international form with ``00``.
        """
        return _unique([
            self.e164,
            self.national,
            self.national_prefix + self.national if self.national_prefix else "",
            "00" + self.e164[1:],
            self.e164[1:],
        ])

    def typed_forms(self) -> list[str]:
        """The number as people type it by hand, spaces and dashes included.

        The region's own grouping (``928 00 00 00``, ``+34 928 00 00 00``,
        ``+34-928-00-00-00``) and, for national numbers whose length allows it,
        groups of three (``928 000 000``, ``+34-928-000-000``). For a CRM whose
        search compares text exactly; one that ignores formatting needs only
        :meth:`variants`.
        """
        parsed = phonenumbers.parse(self.e164, None)
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        international = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        forms = [national, international, international.replace(" ", "-")]
        if len(self.national) % 3 == 0 and len(self.national) >= 6:
            threes = [self.national[i:i + 3] for i in range(0, len(self.national), 3)]
            country = f"+{self.country_code}"
            forms += [" ".join(threes), "-".join([country, *threes]), " ".join([country, *threes])]
        compact = set(self.variants())
        return [form for form in _unique(forms) if form not in compact]


def _unique(forms: list[str]) -> list[str]:
    """``forms`` without empty strings and repeats, order kept."""
    return list(dict.fromkeys(form for form in forms if form))


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
        country_code=parsed.country_code or 0,
        national=national,
        national_prefix=national_prefix,
    )


def is_valid_region(region: str) -> bool:
    """True for a region code phonenumbers knows (``ES``, ``GB``, ``US`` ...)."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS
