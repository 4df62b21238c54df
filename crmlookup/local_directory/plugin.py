"""The local directory as a CRM plugin: ``[crm] backend = "local"``, settings in ``[directory]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..records import MODULES
from ..settings import DirectorySettings
from .directory import LocalDirectory

if TYPE_CHECKING:
    from ..backend import CrmBackend
    from ..mirror.feed import ChangeFeed
    from ..plugins import OpenContext
    from ..writer import CrmWriter


class LocalDirectoryPlugin:
    """The embedded default: one SQLite file, or the packaged demo directory."""

    name = "local"
    section = "directory"
    settings_type = DirectorySettings
    modules = MODULES

    def open_backend(self, settings: DirectorySettings, context: OpenContext) -> LocalDirectory:
        return LocalDirectory.open(settings.path)

    def open_writer(self, backend: CrmBackend, settings: DirectorySettings) -> CrmWriter:
        from .writer import LocalDirectoryWriter

        if not isinstance(backend, LocalDirectory):
            raise TypeError(f"the local directory writes into a LocalDirectory, not into {type(backend).__name__}")
        return LocalDirectoryWriter(backend)

    def change_feed(self, backend: CrmBackend) -> ChangeFeed | None:
        return None  # the directory is local already: nothing to mirror

    async def check_online(self, backend: CrmBackend, settings: DirectorySettings) -> list[str]:
        return []  # opening the file was the whole check

    def describe(self, settings: DirectorySettings) -> str:
        if settings.path:
            return settings.path
        from .directory import demo_directory_path

        return f"packaged demo directory, kept in {demo_directory_path()}"


plugin = LocalDirectoryPlugin()
