"""Exceptions of broker_ws.

::

    BrokerWsError
     ├── ProtocolError        a client message broke protocol v1 (error reply)
     ├── AuthenticationError  a token or its user was refused (close 4001)
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


class ConfigurationError(BrokerWsError):
    """A BROKER_WS setting names something that cannot be used."""
