"""crmroute's errors: one root, a branch per part.

Every error crmroute raises on purpose is a :class:`CrmrouteError`, so a
program embedding it can catch "anything crmroute" in one clause. Each is
caught where a decision is made (the router falls back to a safe route, the
server ends a session, the CLI prints one line). The tree::

    CrmrouteError
    ├── CrmError                    a CRM could not answer (crmlookup)
    │   ├── CrmUnavailable          unreachable, or a server error
    │   ├── CrmTimeout              no answer in time
    │   ├── CrmAuthError            credentials refused, a scope missing
    │   ├── CrmRateLimited          slow down (``retry_after``)
    │   ├── CrmBadResponse          an answer that cannot be read
    │   └── DirectoryError          the local directory file (MirrorFileError: the mirror's)
    │       (retailCRM's own: RetailCrmRejected, RetailCrmNotFound in crmlookup.retailcrm.api)
    ├── DirectoryImportError        a CSV import refused (``problems``)
    ├── PluginError                 a CRM plugin not found, not loadable or registered twice (crmlookup.plugins)
    ├── InvalidNumber               not a phone number (also a ValueError)
    ├── NotAnExtensionList          not a clean list of extensions (also a ValueError)
    ├── DeviceStateUnavailable      Asterisk cannot be asked a phone's state (dialplan)
    ├── InvalidOutcome              headers that identify no call (dialplan, also a ValueError)
    ├── OutboxError                 the outbox cannot be opened or written (dialplan.outbox)
    ├── ConfigError                 a bad configuration, the key named (fastagi_server.config)
    ├── RouteExists                 an AGI script name registered twice (fastagi_server.handlers, also a ValueError)
    └── AgiError                    an AGI exchange ended (fastagi_server.errors, and its branches)

The root lives here, in the package every other one depends on.
"""


class CrmrouteError(Exception):
    """Base of every error crmroute raises on purpose."""


class CrmError(CrmrouteError):
    """A CRM could not answer a lookup.

    ``code`` is the CRM's own error code when it gave one (Zoho's
    ``OAUTH_SCOPE_MISMATCH``, ``INVALID_DATA`` ...), else empty.
    """

    def __init__(self, message: str = "", *, code: str = ""):
        super().__init__(message)
        self.code = code


class CrmUnavailable(CrmError):
    """The CRM could not be reached or answered with a server error."""


class CrmTimeout(CrmError):
    """The CRM did not answer in time."""


class CrmAuthError(CrmError):
    """The CRM refused our credentials (expired, revoked or missing scope)."""


class CrmRateLimited(CrmError):
    """The CRM asked us to slow down.

    ``retry_after``: how many seconds to leave it alone (from its ``Retry-After``
    header, or the back-off chosen for it); None when nothing says.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class CrmBadResponse(CrmError):
    """The CRM answered with something we cannot read (bad JSON, unexpected shape)."""


class DirectoryError(CrmError):
    """The local directory file is missing, unreadable or not a directory."""


class DirectoryImportError(CrmrouteError):
    """A CSV import was refused; nothing was written.

    ``problems`` lists ``(line_number, reason)`` for the bad rows found (the
    first few dozen); ``total`` is how many there were in all, and
    ``stopped_at`` the line reading stopped at when there were too many to go
    on (0 when the whole file was read).
    """

    def __init__(self, problems: list[tuple[int, str]], total: int | None = None, *, stopped_at: int = 0):
        self.problems = problems
        self.total = len(problems) if total is None else total
        self.stopped_at = stopped_at
        first_line, first_reason = problems[0]
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"line {first_line}: {first_reason}{more}")
