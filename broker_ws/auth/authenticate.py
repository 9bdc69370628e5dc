"""From the token a client sends to the :class:`~broker_ws.auth.identity.Identity` of
its session, through the configured ``TOKEN_AUTHENTICATOR``.

The authenticator is the host's: a callable (or its dotted path) that takes the
raw token string and returns an :class:`Identity`, or raises
:class:`~broker_ws.exceptions.AuthenticationError` (refused: error
``auth_failed``, close 4001) or :class:`~broker_ws.exceptions.Unavailable`
(a dependency failed: error ``unavailable``, close 4008). A coroutine function
(or an object whose ``__call__`` is one) is awaited on the event loop; any
other callable runs in the database thread (``database_sync_to_async``), so it
may use the ORM and may block. A Django ``DatabaseError`` it lets escape is
taken for :class:`Unavailable`, and its text stays in the log.

Whatever the authenticator, broker_ws itself refuses a token that has expired
and a token issued at or before a revocation of its user
(:func:`broker_ws.revoke_user`): the revocations of every identity that
arrives while one read is under way are read in one query
(:mod:`broker_ws.session.batching`), so a connect storm costs one query per
batch, not one per token. The default authenticator,
:func:`broker_ws.auth.tokens.simplejwt_authenticator`, reads them in its own
batch.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.db import Error as DatabaseError
from django.utils.module_loading import import_string

from broker_ws.auth.identity import Identity
from broker_ws.auth.tokens import simplejwt_authenticator
from broker_ws.conf import conf
from broker_ws.exceptions import AuthenticationError, ConfigurationError, Unavailable
from broker_ws.publish.revocation import latest_revocations
from broker_ws.session.batching import Batcher

logger = logging.getLogger(__name__)

TokenAuthenticator = Callable[[str], "Identity | Awaitable[Identity]"]

_resolved: tuple[Any, TokenAuthenticator] | None = None


def get_token_authenticator() -> TokenAuthenticator:
    """The configured ``TOKEN_AUTHENTICATOR`` callable (imported once per setting value)."""
    global _resolved
    value = conf.TOKEN_AUTHENTICATOR
    if _resolved is not None and _resolved[0] is value:
        return _resolved[1]
    if callable(value):
        authenticator = value
    else:
        try:
            authenticator = import_string(value)
        except (ImportError, TypeError) as exc:
            raise ConfigurationError(
                f"BROKER_WS['TOKEN_AUTHENTICATOR'] = {value!r} cannot be imported"
            ) from exc
    _resolved = (value, authenticator)
    return authenticator


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


async def authenticate(raw: str) -> Identity:
    """The identity of the session that sent ``raw``.

    Raises:
        AuthenticationError: the token, or its user, is refused (4001).
        Unavailable: a dependency failed while checking it (4008).
        Exception: anything else the host's authenticator raised, or a value that
            is not an :class:`Identity`: a bug of the host's, logged by the caller.
    """
    if not isinstance(raw, str) or not raw:
        raise AuthenticationError("authorization must be a non-empty string")
    authenticator = get_token_authenticator()
    if authenticator is simplejwt_authenticator:
        return await simplejwt_authenticator(raw)  # expiry and revocations checked there
    try:
        if _is_async(authenticator):
            identity = await authenticator(raw)  # type: ignore[misc]
        else:
            identity = await database_sync_to_async(authenticator)(raw)
    except (AuthenticationError, Unavailable):
        raise
    except DatabaseError as exc:
        raise Unavailable("the database could not be read") from exc
    if not isinstance(identity, Identity):
        raise TypeError(
            f"TOKEN_AUTHENTICATOR {authenticator!r} returned {type(identity).__name__}, "
            "not a broker_ws.auth.Identity"
        )
    if identity.expired:
        raise AuthenticationError("Token is expired")
    return await _revocation_checks.of_this_loop().run(identity)


def _refuse_revoked(identities: list[Identity]) -> list[Identity | Exception]:
    """Each identity, or the error that refuses it: revoked at or after its ``iat``
    (a token without one is covered by any revocation of its user)."""
    try:
        latest = latest_revocations(identity.user_id for identity in identities)
    except DatabaseError as exc:
        error = Unavailable.database(exc)
        return [error for _ in identities]
    results: list[Identity | Exception] = []
    for identity in identities:
        revoked = latest.get(identity.user_id)
        issued = dt.datetime.fromtimestamp(identity.issued_at, tz=dt.UTC)
        if revoked is not None and revoked >= issued:
            results.append(AuthenticationError("token was revoked"))
        else:
            results.append(identity)
    return results


#: Revocation reads asked while one is under way share the next trip.
_revocation_checks: Batcher[Identity, Identity] = Batcher(_refuse_revoked)
