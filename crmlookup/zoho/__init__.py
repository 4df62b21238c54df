"""Zoho CRM: OAuth2, the phone search, deals through their contacts, users' extensions."""

from .backend import ZohoBackend
from .settings import DATA_CENTRES, ZohoSettings

__all__ = ["DATA_CENTRES", "ZohoBackend", "ZohoSettings"]
