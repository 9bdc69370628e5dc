"""Exceptions of broker_ws.

::

    BrokerWsError
     ├── ProtocolError        a client message broke protocol v1 (error reply)
     ├── AuthenticationError  a token or its user was refused (close 4001)
     ├── Unavailable          a database or the bus failed while serving a client
     │                        (close 4008: temporary, reconnect after a back-off)
     ├── TooManySessions      a login has no session slot left here (close 4007)
     └── ConfigurationError   BROKER_WS names something that cannot be used
"""

from __future__ import annotations

from typing import Any


class BrokerWsError(Exception):
    """Base class of every broker_ws error."""


class ProtocolError(BrokerWsError):
    """A client message broke protocol v1; answered with an error reply."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class AuthenticationError(BrokerWsError):
    """A token, or the user behind it, was refused."""


class Unavailable(BrokerWsError):
    """A dependency (the database, the bus) failed or was too slow: not the client's
    fault; the message given to clients never carries the dependency's own text."""

    @classmethod
    def database(cls, exc: BaseException) -> Unavailable:
        """The error for a failed database read, ``exc`` kept as its cause (for the
        log), for code that returns errors per item rather than raising them."""
        error = cls("the database could not be read")
        error.__cause__ = exc
        return error


class TooManySessions(BrokerWsError):
    """Every session slot of these logins on this process is taken."""

    def __init__(self, logins: list[str]) -> None:
        super().__init__(f"no session slot left for {logins}")
        self.logins = logins


class CommandError(BrokerWsError):
    """Raised by a host's command handler: the client gets an ``error`` reply with
    this ``code`` (``[a-z][a-z0-9_]*``, at most 64 characters), ``message`` and any
    JSON-encodable ``extra`` fields, and its request's ``id``; the session stays open."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class ConfigurationError(BrokerWsError):
    """A BROKER_WS setting names something that cannot be used."""
