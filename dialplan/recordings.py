"""Call recordings: the ``[recordings]`` section, and the file name the dialplan hands over.

The dialplan records an answered call with ``MixMonitor`` and sets
``CRM_RECORDING`` to the file's name (``${UNIQUEID}.wav``). That name comes
from a channel variable: hostile input like any other. It is kept only when
it names a plain audio file inside ``recordings.directory`` (no ``..``, no
control characters, no NUL, no absolute path elsewhere); otherwise the
outcome keeps the reason instead, and the file is never opened.

MixMonitor closes its file after the hangup handler may have run, so a
recording is read only once it is complete: see :class:`FileSettling`.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit

from crmlookup.settings import check_ranges

# Where MixMonitor writes a file given without a directory (Asterisk's astspooldir/monitor).
DEFAULT_DIRECTORY = "/var/spool/asterisk/monitor"
MODES = ("attach", "link")
# What MixMonitor can write (the format follows the file's extension).
AUDIO_EXTENSIONS = frozenset({"wav", "wav49", "gsm", "mp3", "ogg", "oga", "opus", "flac", "sln", "sln16", "ulaw", "alaw", "g722", "g729", "au"})
MAX_NAME_LENGTH = 255
_PART = re.compile(r"[0-9A-Za-z_+=@,-][0-9A-Za-z_.+=@,-]{0,127}")
_MB = 1024 * 1024


@dataclass(frozen=True)
class RecordingSettings:
    """The ``[recordings]`` section: where recordings are, and what the CRM gets of them."""

    # The folder MixMonitor writes to; CRM_RECORDING names a file inside it.
    directory: str = DEFAULT_DIRECTORY
    # Where the web server of the PBX serves a recording: {file} is replaced by its
    # name inside the directory ("https://pbx.example.com/rec/{file}"); empty: no links.
    url_template: str = ""
    # Zoho: "attach" uploads the file to the Call; "link" writes its address there
    # (needs url_template). A file over max_attachment_mb is linked in either mode.
    mode: str = "attach"
    # Zoho's attachment size limit; a larger file is linked instead of uploaded.
    max_attachment_mb: int = 20
    # Delete the file once the CRM confirmed the upload (never for a link, which points at it).
    delete_after_upload: bool = False
    # A recording is complete once neither its size nor its time of change moved for this long.
    settle_s: float = 5.0
    # How long after the call's end a recording may take to appear and be complete;
    # past it, the outcome is dead with the reason (the Call itself is in the CRM long before).
    wait_max_s: float = 900.0

    def __post_init__(self) -> None:
        if not self.directory or not os.path.isabs(self.directory) or "\x00" in self.directory:
            raise ValueError(f"directory must be an absolute path, got {self.directory!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be {' or '.join(MODES)}, got {self.mode!r}")
        if self.url_template:
            parts = urlsplit(self.url_template.replace("{file}", "x"))
            if self.url_template.count("{file}") != 1 or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url_template must be an http(s) address holding {{file}} once, got {self.url_template!r}")
            if any(char in self.url_template.replace("{file}", "") for char in "{}\"'<> \\"):
                raise ValueError(f"url_template must hold no braces but {{file}}, no quotes or spaces, got {self.url_template!r}")
        if self.mode == "link" and not self.url_template:
            raise ValueError("mode = \"link\" needs url_template (the address the link points at)")
        check_ranges(self, (("max_attachment_mb", 1, 1000), ("wait_max_s", 1, 7 * 86_400)))
        if not 0.05 <= self.settle_s <= 3600:
            raise ValueError(f"settle_s must be between 0.05 and 3600, got {self.settle_s}")

    @property
    def max_attachment_bytes(self) -> int:
        return self.max_attachment_mb * _MB

    def link(self, name: str) -> str:
        """The recording's address, or "" when no url_template is set."""
        return self.url_template.replace("{file}", quote(name, safe="/")) if self.url_template and name else ""

    def path_of(self, name: str) -> Path:
        return Path(self.directory) / name


class RecordingRefused(ValueError):
    """CRM_RECORDING does not name a recording this project may read (the reason is the text)."""


def recording_name(value: str, directory: str) -> str:
    """The recording's name inside ``directory`` (``1760000000.1.wav``, ``2026/12/1760000000.1.wav``);
    raises :class:`RecordingRefused` saying why ``value`` is not one.

    Only the text is checked here, never the file system: nothing is opened.
    """
    if any(not char.isprintable() and char != " " for char in value):
        raise RecordingRefused("the name holds a control character (a newline, a NUL, a line separator...)")
    if len(value) > MAX_NAME_LENGTH:
        raise RecordingRefused(f"the name is longer than {MAX_NAME_LENGTH} characters")
    text = value.strip()
    if os.path.isabs(text) or text.startswith("/"):
        root = posixpath.normpath(directory)
        if posixpath.normpath(text) != text.rstrip("/") or not text.startswith(root.rstrip("/") + "/"):
            raise RecordingRefused(f"{text[:80]!r} is not inside recordings.directory ({directory})")
        text = text[len(root.rstrip("/")) + 1 :]
    parts = text.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise RecordingRefused(f"{text[:80]!r} is not a plain file name (empty, '.' or '..' parts)")
    if len(parts) > 8 or not all(_PART.fullmatch(part) for part in parts):
        raise RecordingRefused(f"{text[:80]!r} holds characters a recording's name does not (letters, digits, . _ - + = @ , only)")
    extension = parts[-1].rpartition(".")[2].lower() if "." in parts[-1] else ""
    if extension not in AUDIO_EXTENSIONS:
        raise RecordingRefused(f"{text[:80]!r} is not an audio file MixMonitor writes (.wav, .gsm, .mp3, .ogg...)")
    return text


@dataclass(frozen=True)
class FileState:
    """What one look at a recording saw."""

    exists: bool
    size: int = 0
    mtime_ns: int = 0


def look(path: Path) -> FileState:
    """The file's size and time of change (a symlink is not followed, and counts as missing)."""
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        return FileState(False)
    if not _regular(stat.st_mode):
        return FileState(False)
    return FileState(True, stat.st_size, stat.st_mtime_ns)


def _regular(mode: int) -> bool:
    import stat as stat_module

    return stat_module.S_ISREG(mode)


class FileSettling:
    """Tells when a recording being written is complete: unchanged for ``settle_s``.

    MixMonitor writes as the call goes (a frame every 20 ms) and closes the
    file a moment after the channel hangs up: a file whose time of change is
    ``settle_s`` old is taken as closed. A file seen to change since the last
    look is not complete, whatever its time of change says (a copy that kept
    an old one). The looks are kept in memory only; a process that starts
    anew decides from the file's own time of change.
    """

    def __init__(self, settle_s: float, clock: Callable[[], float]):
        self._settle_s = settle_s
        self._clock = clock
        self._seen: dict[str, FileState] = {}

    def complete(self, key: str, state: FileState) -> bool:
        """Whether the file of ``key`` is complete, given what a look saw now."""
        if not state.exists:
            self._seen.pop(key, None)
            return False
        earlier = self._seen.get(key)
        self._seen[key] = state
        if earlier is not None and earlier != state:
            return False
        return self._clock() - state.mtime_ns / 1e9 >= self._settle_s

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def wait_for(self, key: str) -> float:
        """How long until ``key`` may be complete, from the last look."""
        earlier = self._seen.get(key)
        if earlier is None:
            return self._settle_s
        return min(self._settle_s, max(0.05, earlier.mtime_ns / 1e9 + self._settle_s - self._clock()))
