"""Credentials: read from the config, a file or the environment, and never shown.

A :class:`Secret` prints as ``Secret('********')`` in reprs, logs and
tracebacks; only :meth:`Secret.reveal` gives the text, at the one place it is
sent (an HTTP request body or header).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import CrmAuthError

# A credential file larger than this is not a credential (and not read into memory).
MAX_SECRET_BYTES = 16_384


class Secret:
    """A credential whose text is only available through :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def read_secret(key: str, inline: str, file: str, env_var: str, environ: Mapping[str, str] | None = None) -> Secret:
    """The credential ``key`` names: its inline value, else the file ``key_file`` names, else ``$env_var``.

    Setting both the inline value and the file is refused (which one would
    win is a question nobody should have to ask). Raises
    :class:`~crmlookup.errors.CrmAuthError` naming the key when the credential
    is missing, the file unreadable or empty.
    """
    environ = os.environ if environ is None else environ
    if inline and file:
        raise CrmAuthError(f"{key} and {key}_file are both set: keep one")
    if inline:
        return Secret(inline.strip())
    if file:
        return Secret(_read_file(f"{key}_file", Path(file)))
    value = environ.get(env_var, "").strip()
    if not value:
        raise CrmAuthError(f"{key} is not set (set {key}, {key}_file or ${env_var})")
    return Secret(value)


def _read_file(key: str, path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise CrmAuthError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise CrmAuthError(f"{key}: {path} is larger than {MAX_SECRET_BYTES} bytes; not a credential")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CrmAuthError(f"{key}: {path} is not UTF-8 text") from None
    if not text:
        raise CrmAuthError(f"{key}: {path} is empty")
    return text
