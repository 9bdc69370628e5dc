"""A backend's own tokens for :mod:`bench.auth_storm`: HS256 JWTs carrying the logins.

The server side imports :data:`AUTHENTICATOR` through the setting
``BROKER_WS["TOKEN_AUTHENTICATOR"] = AUTHENTICATOR_PATH``; the bench issues the
tokens with :func:`issue`. The secret is the bench's own, never a real one.
"""

from __future__ import annotations

import time

import jwt

from broker_ws.auth import JWTAuthenticator

SECRET = "bench-only-secret-for-own-tokens-0123456789"
AUTHENTICATOR_PATH = "bench.own_tokens.AUTHENTICATOR"

#: What the server checks the bench's tokens with.
AUTHENTICATOR = JWTAuthenticator(key=SECRET, algorithms=["HS256"], logins_claim="logins")


def issue(user_id: str, logins: list[str], lifetime: int = 3600) -> str:
    """An access token of ``user_id`` that may see ``logins``."""
    now = int(time.time())
    claims = {"sub": user_id, "logins": logins, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, SECRET, algorithm="HS256")
