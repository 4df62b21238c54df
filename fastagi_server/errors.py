"""The errors of an AGI session."""

from crmlookup.errors import CrmrouteError


class AgiError(CrmrouteError):
    """Base of everything that can end an AGI exchange."""


class AgiProtocolError(AgiError):
    """The peer sent something that is not AGI."""


class AgiLimitExceeded(AgiError):
    """A configured limit (line length, header count, a timeout) was hit."""


class AgiConnectionClosed(AgiError):
    """The peer closed the connection (or stdin reached its end)."""


class AgiCommandError(AgiError):
    """Asterisk refused a command; ``code`` is its reply code."""

    code = 0

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AgiInvalidCommand(AgiCommandError):
    """``510 Invalid or unknown command``."""

    code = 510


class AgiDeadChannel(AgiCommandError):
    """``511 Command Not Permitted on a dead channel or intercept routine``."""

    code = 511


class AgiUsageError(AgiCommandError):
    """``520-...``: the multi-line usage reply to a malformed command."""

    code = 520
