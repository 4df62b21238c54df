"""Extensions as CRM data gives them: a cell or a field that should hold a list of them.

CRM text is hostile: a field meant for ``101, 102`` may hold ``PJSIP/105`` or
``Local/999@default``. Splitting such text on whatever looks like a
separator turns it into extensions nobody meant (``PJSIP`` and ``105``); here
a value is either a clean list of extensions or refused as a whole, with the
part that is not one named.
"""

from __future__ import annotations

import re
from typing import Callable

from .errors import CrmrouteError

# Characters an extension may ever contain, whatever the admin's pattern says:
# none of them means anything in a dial string (no ``&``, ``,``, ``/``, ``@``).
SAFE_EXTENSION = re.compile(r"[0-9A-Za-z_.+*#-]{1,64}")


class NotAnExtensionList(CrmrouteError, ValueError):
    """The text is not a clean list of extensions; the message names the first part that is not one."""


def is_safe_extension(extension: str) -> bool:
    """True when ``extension`` holds only characters a dial string may carry."""
    return SAFE_EXTENSION.fullmatch(extension) is not None


def split_extensions(text: str, separators: str, valid: Callable[[str], bool] = is_safe_extension) -> tuple[str, ...]:
    """The extensions of ``text``, in order, without repeats.

    ``separators`` is what goes inside a regular expression's ``[...]``: ``;``,
    or ``\\s,;`` for whitespace, commas and semicolons. Raises
    :class:`NotAnExtensionList` when a part is not ``valid``; empty text is no extension.
    """
    parts = [part.strip() for part in re.split(f"[{separators}]", text)]
    extensions: dict[str, None] = {}
    for part in parts:
        if not part:
            continue
        if not valid(part):
            raise NotAnExtensionList(f"{part[:40]!r} is not an extension")
        extensions.setdefault(part, None)
    return tuple(extensions)
