"""Everything that talks to a CRM: numbers, backends, records.

Knows nothing about channels or dial strings: it answers "who owns this number?".
"""

from .backend import CrmBackend
from .errors import (
    CrmAuthError,
    CrmBadResponse,
    CrmError,
    CrmrouteError,
    CrmRateLimited,
    CrmTimeout,
    CrmUnavailable,
    DirectoryError,
    DirectoryImportError,
)
from .phone import InvalidNumber, PhoneNumber, normalise
from .records import MODULES, LookupResult, Match, Owner

__all__ = [
    "CrmBackend",
    "CrmAuthError",
    "CrmBadResponse",
    "CrmError",
    "CrmrouteError",
    "CrmRateLimited",
    "CrmTimeout",
    "CrmUnavailable",
    "DirectoryError",
    "DirectoryImportError",
    "InvalidNumber",
    "PhoneNumber",
    "normalise",
    "MODULES",
    "LookupResult",
    "Match",
    "Owner",
]
