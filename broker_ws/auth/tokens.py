"""The default ``TOKEN_AUTHENTICATOR`` (simplejwt access tokens) and the user → logins mapping.

A token is accepted only as a simplejwt *access* token: ``AccessToken(raw)``
checks the signature with the configured algorithm only (so ``alg: none``
and algorithm swaps fail), the expiry, and the ``token_type`` claim (so a
refresh token is refused; ``UntypedToken`` would accept it). The user is
then loaded and checked by simplejwt's own ``JWTAuthentication.get_user``
(user exists, active, password not changed when ``CHECK_REVOKE_TOKEN``),
plus an ``is_active`` check of our own because the host may have turned
simplejwt's off, and a check that the user was not revoked after the token
was issued (:mod:`broker_ws.publish.revocation`).

A database that fails meanwhile is not the client's fault: it raises
:class:`~broker_ws.exceptions.Unavailable` (close 4008, reconnect after a
back-off), never :class:`~broker_ws.exceptions.AuthenticationError` (4001,
do not reconnect with that token), and its driver's text, which names the
database host and port, stays in the server log.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.db import Error as DatabaseError
from django.utils.module_loading import import_string

from broker_ws.auth.identity import Identity
from broker_ws.conf import conf
from broker_ws.exceptions import AuthenticationError, ConfigurationError, Unavailable
from broker_ws.publish.revocation import latest_revocations
from broker_ws.session.batching import Batcher

logger = logging.getLogger(__name__)

LoginResolver = Callable[[Any], Iterable[str]]


def username_login(user: Any) -> list[str]:
    """Default LOGIN_RESOLVER: a user sees the login equal to its username.

    Fits backends whose trading login is the user name; any other backend
    points LOGIN_RESOLVER at its own function.
    """
    return [str(user.get_username())]


def get_login_resolver() -> LoginResolver:
    """The configured ``LOGIN_RESOLVER`` callable."""
    value = conf.LOGIN_RESOLVER
    if callable(value):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        raise ConfigurationError(
            f"BROKER_WS['LOGIN_RESOLVER'] = {value!r} cannot be imported"
        ) from exc


def validate_access_token(raw: str) -> Any:
    """Return the simplejwt ``AccessToken`` for ``raw`` or raise AuthenticationError."""
    from rest_framework_simplejwt.exceptions import TokenError
    from rest_framework_simplejwt.tokens import AccessToken

    if not raw:
        raise AuthenticationError("authorization must be a non-empty string")
    try:
        return AccessToken(raw)  # type: ignore[arg-type]
    except TokenError as exc:
        raise AuthenticationError(str(exc) or "Token is invalid") from exc
    except DatabaseError as exc:  # a host's token class that looks the token up
        raise Unavailable("the database could not be read") from exc
    except Exception as exc:
        # PyJWT may raise others on garbage; their text is not for the client.
        raise AuthenticationError("Token is invalid") from exc


def _load_identities(tokens: list[Any]) -> list[Identity | Exception]:
    """The identity of each validated token, or the error that refuses it.

    One trip to a database thread for every token that waited meanwhile: the
    users of all of them are read in one query and checked by simplejwt (see
    :class:`_PrefetchedUsers`), the revocations of all of them are read in one
    query, and the login resolver runs once per user.
    """
    from rest_framework.exceptions import AuthenticationFailed

    try:
        checker = _batch_checker(tokens)
    except DatabaseError as exc:  # each token's own query would fail the same way
        return [Unavailable.database(exc) for _ in tokens]
    results: list[Identity | Exception] = []
    users: list[Any] = []
    for token in tokens:
        try:
            users.append(checker.get_user(token))
        except AuthenticationFailed as exc:
            users.append(AuthenticationError(_detail_text(exc.detail)))
        except DatabaseError as exc:
            users.append(Unavailable.database(exc))
        except Exception as exc:  # a host's user model: its token alone fails
            users.append(exc)
    found = [user for user in users if not isinstance(user, Exception)]
    try:
        revoked = latest_revocations(str(user.pk) for user in found)
    except DatabaseError as exc:
        return [
            user if isinstance(user, Exception) else Unavailable.database(exc) for user in users
        ]
    resolver = get_login_resolver()
    logins_of: dict[str, tuple[str, ...]] = {}
    for token, user in zip(tokens, users, strict=True):
        if isinstance(user, Exception):
            results.append(user)
            continue
        try:
            results.append(_identity_of(token, user, revoked, resolver, logins_of))
        except AuthenticationError as exc:
            results.append(exc)
        except DatabaseError as exc:
            results.append(Unavailable.database(exc))
        except Exception as exc:  # a host's resolver failing: its token alone fails
            results.append(exc)
    return results


class _PrefetchedUsers:
    """The user model as simplejwt's ``JWTAuthentication.get_user`` sees it in a batch.

    ``get_user`` looks the token's user up with ``user_model.objects.get(<USER_ID_FIELD>=
    <claim>)`` and then makes its own checks (inactive, password changed); for a
    batch of tokens that is one query each. This stands in for the model during
    one batch: the users were read in one query, ``get`` answers from them (or
    raises the model's ``DoesNotExist``, as the query would), and any other
    lookup goes to the model itself, so simplejwt's checks are the ones that run.
    """

    def __init__(self, model: Any, field: str, users: dict[str, Any]) -> None:
        self.DoesNotExist = model.DoesNotExist
        self.objects = self
        self._model, self._field, self._users = model, field, users

    def get(self, **lookup: Any) -> Any:
        if len(lookup) == 1 and self._field in lookup:
            user = self._users.get(str(lookup[self._field]))
            if user is None:
                raise self.DoesNotExist
            return user
        return self._model.objects.get(**lookup)


def _batch_checker(tokens: list[Any]) -> Any:
    """A simplejwt authenticator for these tokens; for more than one, one whose users
    are read in one query (:class:`_PrefetchedUsers`).

    Raises:
        DatabaseError: that query failed. Any other failure to read them (a host's
            user model) leaves the plain authenticator, token by token.
    """
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.settings import api_settings

    checker: Any = JWTAuthentication()  # its user_model is swapped below
    if len(tokens) < 2:
        return checker

    claim, field = api_settings.USER_ID_CLAIM, api_settings.USER_ID_FIELD
    ids = {str(token[claim]) for token in tokens if claim in token}
    model = checker.user_model
    try:
        users = {str(getattr(u, field)): u for u in model.objects.filter(**{f"{field}__in": ids})}
    except DatabaseError:
        raise
    except Exception:
        return checker
    checker.user_model = _PrefetchedUsers(model, field, users)
    return checker


def _identity_of(
    token: Any,
    user: Any,
    revoked: dict[str, dt.datetime],
    resolver: LoginResolver,
    logins_of: dict[str, tuple[str, ...]],
) -> Identity:
    if not getattr(user, "is_active", False):
        raise AuthenticationError("user is inactive")
    user_id = str(user.pk)
    issued = token.get("iat")
    latest = revoked.get(user_id)
    if (
        issued is not None
        and latest is not None
        and latest >= dt.datetime.fromtimestamp(int(issued), tz=dt.UTC)
    ):
        raise AuthenticationError("token was revoked")
    if user_id not in logins_of:  # several tokens of one user in one trip
        logins_of[user_id] = tuple(dict.fromkeys(str(login) for login in resolver(user)))
    return Identity(
        user_id=user_id,
        username=str(user.get_username()),
        logins=logins_of[user_id],
        expires_ms=int(token["exp"]) * 1000,
        issued_at=int(issued or 0),
    )


#: Identity loads asked while one trip to the database thread is under way go on
#: the next one together (:mod:`broker_ws.session.batching`).
_identities: Batcher[Any, Identity] = Batcher(_load_identities)


def _detail_text(detail: Any) -> str:
    """The human text of a DRF exception's detail (simplejwt's is a dict)."""
    if isinstance(detail, dict):
        detail = detail.get("detail", "")
    return str(detail) or "Token is invalid"


async def simplejwt_authenticator(raw: str) -> Identity:
    """The default ``TOKEN_AUTHENTICATOR``: ``raw`` as a simplejwt access token, its
    user checked by simplejwt, its revocations checked, and its logins from
    ``LOGIN_RESOLVER``; concurrent calls share database trips (one query for the
    users and one for the revocations of all the tokens waiting meanwhile).

    Raises:
        AuthenticationError: the token or its user is refused.
        Unavailable: the database failed while checking it.
    """
    token = validate_access_token(raw)
    return await _identities.of_this_loop().run(token)
