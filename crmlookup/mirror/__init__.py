"""The local mirror of a CRM's phone index: calls are answered from it, never waiting for the CRM.

:mod:`.store` is the SQLite file, :mod:`.refresher` keeps it fresh from a
:class:`~.feed.ChangeFeed`, :mod:`.backend` answers lookups from it (and asks
the CRM live for what it does not know yet), :mod:`.credits` says what it costs.
"""
