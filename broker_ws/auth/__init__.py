"""Who may connect: tokens to users and logins, origins, per-address throttling
and admission at the accept.

``broker_ws.auth.username_login`` (the default ``LOGIN_RESOLVER``) is
importable from here."""

from broker_ws.auth.tokens import username_login

__all__ = ["username_login"]
