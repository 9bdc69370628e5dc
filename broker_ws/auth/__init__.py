"""Who may connect: tokens to identities (users and their logins), origins,
per-address throttling and admission at the accept.

Public, and importable from ``settings.py`` (nothing here touches the models at
import time)::

    Identity                 what a TOKEN_AUTHENTICATOR returns
    JWTAuthenticator         a TOKEN_AUTHENTICATOR for a backend's own JWTs (PyJWT)
    simplejwt_authenticator  the default TOKEN_AUTHENTICATOR
    username_login           the default LOGIN_RESOLVER
    AuthenticationError      raised by an authenticator: refused (4001)
    Unavailable              raised by an authenticator: a dependency failed (4008)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker_ws.auth.identity import Identity
from broker_ws.exceptions import AuthenticationError, Unavailable

if TYPE_CHECKING:
    from broker_ws.auth.jwt_tokens import JWTAuthenticator
    from broker_ws.auth.tokens import simplejwt_authenticator, username_login

__all__ = [
    "AuthenticationError",
    "Identity",
    "JWTAuthenticator",
    "Unavailable",
    "simplejwt_authenticator",
    "username_login",
]

_LOCATIONS = {
    "JWTAuthenticator": "broker_ws.auth.jwt_tokens",
    "simplejwt_authenticator": "broker_ws.auth.tokens",
    "username_login": "broker_ws.auth.tokens",
}


def __getattr__(name: str) -> Any:
    # Lazy: settings.py may import this package before the models are ready.
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'broker_ws.auth' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)
