"""A ``TOKEN_AUTHENTICATOR`` for JWTs that a backend issues itself, checked with PyJWT.

For a backend with its own token service rather than simplejwt: its claims may be
named differently (``type`` instead of ``token_type``, no ``jti``), it may sign
with RS256 or ES256 and publish its keys as a JWKS document, and its tokens may
carry the logins they may see, which then costs no database query per token::

    from broker_ws.auth import JWTAuthenticator

    BROKER_WS = {
        "TOKEN_AUTHENTICATOR": JWTAuthenticator(
            jwks_url="https://auth.example.com/.well-known/jwks.json",
            algorithms=["RS256"],
            audience="trading",
            logins_claim="logins",
        ),
    }

What is checked: the signature, with ``algorithms`` only (there is no default,
so ``alg: none`` and algorithm swaps fail); ``exp``, which is required;
``aud``, ``iss`` and the type claim when configured. Then the logins: from
``logins_claim`` when it is set (a list of strings or numbers), otherwise the
user is read (``user_lookup`` = the ``user_id_claim``; one query for every token
that waited meanwhile), must be active, and ``LOGIN_RESOLVER`` gives them.

It is a coroutine function: the signature is checked on the event loop (tens of
microseconds), a JWKS lookup runs in a worker thread (PyJWT's client caches the
key set for ``jwks_lifespan`` seconds and blocks while fetching it), and the user
read in the database thread. A key set that cannot be fetched is
:class:`~broker_ws.exceptions.Unavailable` (4008), not the client's fault.
RS256 and ES256 need PyJWT's crypto extra: ``pip install 'broker-ws[jwt]'``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import jwt
from django.contrib.auth import get_user_model
from django.db import Error as DatabaseError

from broker_ws.auth.identity import Identity
from broker_ws.exceptions import AuthenticationError, Unavailable
from broker_ws.session.batching import Batcher

logger = logging.getLogger(__name__)

_JWKS_CONNECTION_ERROR: type[Exception] = getattr(
    jwt, "PyJWKClientConnectionError", jwt.PyJWKClientError
)


class JWTAuthenticator:
    """Checks a backend's own JWTs and makes the session's :class:`Identity` of them.

    Args:
        key: the verification key: the shared secret for HS256, a PEM public key
            (or a key object) for RS256/ES256. Exactly one of ``key`` and
            ``jwks_url``.
        jwks_url: where the issuer publishes its JWKS document; the token's ``kid``
            selects the key.
        algorithms: the only algorithms accepted, e.g. ``["RS256"]``.
        audience, issuer: required values of ``aud`` and ``iss``, when given.
        user_id_claim: the claim holding the user's primary key (``"sub"``).
        username_claim: the claim shown as ``authorized.data.user`` when the user
            is not read; otherwise the user's ``get_username()``.
        logins_claim: the claim listing the logins; ``None`` reads the user and
            asks ``LOGIN_RESOLVER``.
        type_claim, type_value: a claim that must hold this value (``"type"``,
            ``"access"`` to refuse a backend's refresh tokens).
        user_lookup: the user model field that ``user_id_claim`` matches
            (``"pk"``), when the user is read.
        leeway: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
        jwks_lifespan: seconds the key set is cached.
        jwks_timeout: seconds one fetch of the key set may take (PyJWT's default is
            30, longer than ``AUTH_TIMEOUT``); a fetch that fails or times out is
            :class:`~broker_ws.exceptions.Unavailable`.
    """

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        key: Any = None,
        jwks_url: str | None = None,
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        user_id_claim: str = "sub",
        username_claim: str | None = "username",
        logins_claim: str | None = None,
        type_claim: str | None = None,
        type_value: str | None = None,
        user_lookup: str = "pk",
        leeway: float = 0,
        jwks_lifespan: float = 300,
        jwks_timeout: float = 5,
    ) -> None:
        if (key is None) == (jwks_url is None):
            raise ValueError("JWTAuthenticator needs exactly one of key and jwks_url")
        if not algorithms or isinstance(algorithms, str):
            raise ValueError("JWTAuthenticator needs a list of algorithms, e.g. ['RS256']")
        if (type_claim is None) != (type_value is None):
            raise ValueError("JWTAuthenticator: type_claim and type_value go together")
        self.algorithms = list(algorithms)
        self.key = key
        self.jwks = (
            jwt.PyJWKClient(jwks_url, lifespan=jwks_lifespan, timeout=jwks_timeout)
            if jwks_url
            else None
        )
        self.audience = audience
        self.issuer = issuer
        self.user_id_claim = user_id_claim
        self.username_claim = username_claim
        self.logins_claim = logins_claim
        self.type_claim = type_claim
        self.type_value = type_value
        self.user_lookup = user_lookup
        self.leeway = leeway
        self._users: Batcher[str, tuple[str, tuple[str, ...]]] = Batcher(self._load_users)

    def __repr__(self) -> str:
        source = "jwks" if self.jwks is not None else "key"
        return f"JWTAuthenticator({source}, algorithms={self.algorithms!r})"

    async def __call__(self, raw: str) -> Identity:
        claims = self.decode(raw, await self._key_for(raw))
        user_id = claims.get(self.user_id_claim)
        if isinstance(user_id, bool) or not isinstance(user_id, str | int) or user_id == "":
            raise AuthenticationError("Token has no user")
        user_id = str(user_id)
        if self.logins_claim is not None:
            logins = claims.get(self.logins_claim)
            if not isinstance(logins, list) or not all(
                isinstance(login, str | int) and not isinstance(login, bool) for login in logins
            ):
                raise AuthenticationError("Token has no logins")
            username = claims.get(self.username_claim) if self.username_claim else None
            name = str(username) if isinstance(username, str | int) else user_id
            login_list = tuple(str(login) for login in logins)
        else:
            name, login_list = await self._users.of_this_loop().run(user_id)
        issued = claims.get("iat")
        return Identity(
            user_id=user_id,
            username=name,
            logins=login_list,
            expires_ms=int(claims["exp"]) * 1000,
            issued_at=int(issued) if isinstance(issued, int | float) and issued > 0 else 0,
        )

    async def _key_for(self, raw: str) -> Any:
        if self.jwks is None:
            return self.key
        try:
            return (await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, raw)).key
        except _JWKS_CONNECTION_ERROR as exc:
            raise Unavailable("the token issuer's keys could not be fetched") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise AuthenticationError("Token is invalid") from exc

    def decode(self, raw: str, key: Any) -> dict[str, Any]:
        """The token's claims, once its signature, expiry, audience, issuer and type
        are checked; otherwise :class:`AuthenticationError`."""
        try:
            claims: dict[str, Any] = jwt.decode(
                raw,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("Token is expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("Token is invalid") from exc
        except Exception as exc:  # a malformed key or token PyJWT did not expect
            raise AuthenticationError("Token is invalid") from exc
        if self.type_claim is not None and claims.get(self.type_claim) != self.type_value:
            raise AuthenticationError("Token has wrong type")
        return claims

    def _load_users(self, user_ids: list[str]) -> list[tuple[str, tuple[str, ...]] | Exception]:
        """The username and logins of each user, read in one query; runs in the
        database thread."""
        from broker_ws.auth.tokens import get_login_resolver  # imports models: not at settings time

        model = get_user_model()
        try:
            users = {
                str(getattr(user, self.user_lookup)): user
                for user in model._default_manager.filter(**{f"{self.user_lookup}__in": user_ids})
            }
        except DatabaseError as exc:
            error = Unavailable.database(exc)
            return [error for _ in user_ids]
        resolver = get_login_resolver()
        results: list[tuple[str, tuple[str, ...]] | Exception] = []
        for user_id in user_ids:
            user = users.get(user_id)
            if user is None:
                results.append(AuthenticationError("User not found"))
            elif not getattr(user, "is_active", False):
                results.append(AuthenticationError("user is inactive"))
            else:
                try:
                    logins = tuple(str(login) for login in resolver(user))
                    results.append((str(user.get_username()), logins))
                except DatabaseError as exc:
                    results.append(Unavailable.database(exc))
                except Exception as exc:  # the host's resolver: this token alone fails
                    results.append(exc)
        return results
