"""The local directory: the embedded default CRM (one SQLite file)."""

from .directory import LocalDirectory, open_connection, open_demo_connection
from .importer import ImportSummary, import_csv, import_csv_text

__all__ = ["LocalDirectory", "ImportSummary", "import_csv", "import_csv_text", "open_connection", "open_demo_connection"]
