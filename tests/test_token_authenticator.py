"""``BROKER_WS["TOKEN_AUTHENTICATOR"]``: a backend's own tokens, end to end.

Each test speaks protocol v1 to the ASGI application (``broker_ws.testing``)
with a token the way a backend with its own token service issues it: PyJWT HS256
tokens whose claims are not simplejwt's, RS256 tokens checked against a PEM
public key and against a JWKS document that the test serves over HTTP itself,
tokens that carry their logins, and host callables (sync and async). Whatever
the authenticator, broker_ws refuses expired and revoked tokens, and a host
bug is an ``internal_error`` with close 4008, never a traceback to the client.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from asgiref.sync import async_to_sync
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from broker_ws import ais_revoked, arevoke_user, is_revoked, revoke_user
from broker_ws.auth import AuthenticationError, Identity, JWTAuthenticator, Unavailable
from broker_ws.auth.authenticate import authenticate
from broker_ws.checks import check_settings
from broker_ws.wire.protocol import CloseCode
from tests.conftest import Client, broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "the-backends-own-secret-of-at-least-32-bytes"
ISSUER = "https://auth.broker.test"


def hs256(**claims: Any) -> str:
    """A token as the backend's own PyJWT token service signs it."""
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 300, **claims}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rs256(key: rsa.RSAPrivateKey, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    headers = {"kid": kid} if kid else None
    return jwt.encode(
        {"iat": now, "exp": now + 300, "iss": ISSUER, "aud": "trading", **claims},
        key,
        algorithm="RS256",
        headers=headers,
    )


class JWKSServer:
    """A JWKS document on a loopback port, served by this test process."""

    def __init__(self, keys: dict[str, rsa.RSAPrivateKey]) -> None:
        document = {
            "keys": [
                {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid}
                for kid, key in keys.items()
            ]
        }
        body = json.dumps(document).encode()
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def jwks(rsa_key: rsa.RSAPrivateKey) -> Iterator[JWKSServer]:
    server = JWKSServer({"key-2026": rsa_key})
    yield server
    server.stop()


def authenticator_setting(authenticator: Any) -> Any:
    return override_settings(BROKER_WS=broker_ws_settings(TOKEN_AUTHENTICATOR=authenticator))


async def authorize(token: str) -> tuple[dict[str, Any], Client]:
    """The first reply to ``token``, and the client (closed if the server did not)."""
    client = Client()
    await client.connect()
    await client.send({"authorization": token})
    return await client.recv(), client


async def refused(token: str) -> tuple[dict[str, Any], int]:
    reply, client = await authorize(token)
    return reply, await client.recv_close()


# --- (a) a backend's own PyJWT tokens -------------------------------------------------


OWN_TOKENS = JWTAuthenticator(
    key=SECRET,
    algorithms=["HS256"],
    user_id_claim="user_id",
    type_claim="type",
    type_value="access",
)


async def test_own_hs256_tokens_with_type_claim_and_no_jti_authorize(make_user):
    """``type`` instead of simplejwt's ``token_type``, no ``jti``: the user is read
    and LOGIN_RESOLVER gives its logins, as for simplejwt tokens."""
    user = await make_user("erin", ["4001", "4002"])
    with authenticator_setting(OWN_TOKENS):
        reply, client = await authorize(hs256(user_id=user.user_id, type="access"))
        assert reply["event"] == "authorized", reply
        assert reply["data"]["user"] == "erin"
        assert reply["data"]["logins"] == ["4001", "4002"]
        await client.close()


@pytest.mark.parametrize(
    "case",
    ["refresh type", "no type", "other secret", "alg none", "expired", "no exp", "unknown user"],
)
async def test_own_tokens_that_must_be_refused_get_4001(make_user, case):
    user = await make_user("frank", ["4003"])
    now = int(time.time())
    claims: dict[str, Any] = {"user_id": user.user_id, "type": "access"}
    token = {
        "refresh type": lambda: hs256(user_id=user.user_id, type="refresh"),
        "no type": lambda: hs256(user_id=user.user_id),
        "other secret": lambda: jwt.encode(
            {**claims, "exp": now + 60}, "another-secret-of-at-least-32-bytes!!", "HS256"
        ),
        "alg none": lambda: jwt.encode({**claims, "exp": now + 60}, None, algorithm="none"),
        "expired": lambda: hs256(**claims, exp=now - 5),
        "no exp": lambda: jwt.encode(claims, SECRET, algorithm="HS256"),
        "unknown user": lambda: hs256(user_id=999_999, type="access"),
    }[case]()
    with authenticator_setting(OWN_TOKENS):
        reply, code = await refused(token)
    assert reply["event"] == "error" and reply["data"]["code"] == "auth_failed", reply
    assert code == CloseCode.AUTH_FAILED


async def test_an_inactive_users_own_token_is_refused(make_user):
    user = await make_user("gina", ["4004"], active=False)
    with authenticator_setting(OWN_TOKENS):
        reply, code = await refused(hs256(user_id=user.user_id, type="access"))
    assert reply["data"]["code"] == "auth_failed" and code == CloseCode.AUTH_FAILED


# --- (b) RS256: a PEM public key, and a JWKS document ----------------------------------


async def test_rs256_tokens_checked_against_a_pem_public_key(make_user, rsa_key):
    user = await make_user("hana", ["4005"])
    authenticator = JWTAuthenticator(
        key=public_pem(rsa_key), algorithms=["RS256"], audience="trading", issuer=ISSUER
    )
    with authenticator_setting(authenticator):
        reply, client = await authorize(rs256(rsa_key, sub=str(user.user_id)))
        assert reply["event"] == "authorized" and reply["data"]["logins"] == ["4005"], reply
        await client.close()

        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong = {
            "another key": rs256(other_key, sub=str(user.user_id)),
            "another audience": rs256(rsa_key, sub=str(user.user_id), aud="backoffice"),
            "another issuer": rs256(rsa_key, sub=str(user.user_id), iss="https://evil.test"),
            # Algorithm confusion: HS256 "signed" with the public key as the secret.
            "HS256 with the public key": _hs256_with_public_key(public_pem(rsa_key), user.user_id),
        }
        for name, token in wrong.items():
            reply, code = await refused(token)
            assert reply["data"]["code"] == "auth_failed", (name, reply)
            assert code == CloseCode.AUTH_FAILED, name


def _hs256_with_public_key(pem: bytes, user_id: int) -> str:
    """An HS256 token whose secret is the RS256 public key (PyJWT refuses to make one
    with a PEM key, so it is assembled by hand as an attacker would)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": str(user_id), "exp": int(time.time()) + 60, "aud": "trading", "iss": ISSUER}
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(pem, header + b"." + payload, hashlib.sha256).digest())
    return (header + b"." + payload + b"." + signature).decode()


async def test_rs256_tokens_checked_against_a_jwks_document(make_user, rsa_key, jwks):
    """The token's ``kid`` selects the key in the JWKS document served by the test; the
    key set is fetched once and cached for the next tokens."""
    user = await make_user("ivan", ["4006"])
    authenticator = JWTAuthenticator(
        jwks_url=jwks.url, algorithms=["RS256"], audience="trading", issuer=ISSUER
    )
    with authenticator_setting(authenticator):
        for _ in range(3):
            reply, client = await authorize(rs256(rsa_key, kid="key-2026", sub=str(user.user_id)))
            assert reply["event"] == "authorized" and reply["data"]["logins"] == ["4006"], reply
            await client.close()
        assert jwks.fetches == 1

        reply, code = await refused(rs256(rsa_key, kid="key-1999", sub=str(user.user_id)))
        assert reply["data"]["code"] == "auth_failed" and code == CloseCode.AUTH_FAILED, reply


async def test_a_jwks_document_that_cannot_be_fetched_is_unavailable_not_auth_failed(
    make_user, rsa_key, jwks
):
    """The issuer's key server is down: the token is not the client's fault, so the
    answer is ``unavailable`` and 4008 (reconnect later), without the URL or the
    driver's text in the reply."""
    user = await make_user("jana", ["4007"])
    url = jwks.url
    jwks.stop()
    authenticator = JWTAuthenticator(jwks_url=url, algorithms=["RS256"], audience="trading")
    with authenticator_setting(authenticator):
        reply, code = await refused(rs256(rsa_key, kid="key-2026", sub=str(user.user_id)))
    assert reply["data"]["code"] == "unavailable", reply
    assert code == CloseCode.UNAVAILABLE
    assert "127.0.0.1" not in json.dumps(reply)


# --- (c) the logins as a claim: no user read --------------------------------------------


LOGINS_IN_TOKEN = JWTAuthenticator(
    key=SECRET, algorithms=["HS256"], logins_claim="logins", username_claim="name"
)


def _queries_of(token: str) -> tuple[Identity, list[str]]:
    """Authenticate ``token`` in this (the database) thread, capturing its queries."""
    with CaptureQueriesContext(connection) as queries:
        identity = async_to_sync(authenticate)(token)
    return identity, [query["sql"] for query in queries.captured_queries]


def test_logins_in_the_token_cost_no_user_query(django_user_model):
    """The only query left is the revocation check (one per batch of authorizations
    under way together); the default path also reads the user and its logins."""
    from rest_framework_simplejwt.tokens import AccessToken

    from project.broker.models import Account

    user = django_user_model.objects.create_user("kira", password="pw")
    Account.objects.create(user=user, login="4008")
    token = hs256(sub=str(user.pk), name="kira", logins=["4008", 4009])
    with override_settings(BROKER_WS=broker_ws_settings(TOKEN_AUTHENTICATOR=LOGINS_IN_TOKEN)):
        identity, queries = _queries_of(token)
    assert identity == Identity(
        str(user.pk), "kira", ("4008", "4009"), identity.expires_ms, identity.issued_at
    )
    assert len(queries) == 1 and "broker_ws_revocation" in queries[0], queries

    identity, queries = _queries_of(str(AccessToken.for_user(user)))
    assert identity.logins == ("4008",)
    assert any(get_user_model()._meta.db_table in sql for sql in queries), queries


async def test_logins_claim_decides_what_the_session_sees(make_user):
    """The claim is the security boundary: the session is authorized for exactly the
    logins the token lists, whatever accounts the user has."""
    user = await make_user("lena", ["4010", "4011"])
    with authenticator_setting(LOGINS_IN_TOKEN):
        reply, client = await authorize(hs256(sub=str(user.user_id), logins=["4011"]))
        assert reply["data"]["logins"] == ["4011"] and reply["data"]["user"] == str(user.user_id)
        await client.close()
        for bad in ({"logins": "4011"}, {"logins": [True]}, {}, {"logins": [{"x": 1}]}):
            reply, code = await refused(hs256(sub=str(user.user_id), **bad))
            assert reply["data"]["code"] == "auth_failed", (bad, reply)


# --- host callables ---------------------------------------------------------------------


def sync_authenticator(raw: str) -> Identity:
    """A host's sync authenticator: opaque tokens ``"session:<username>"`` looked up
    with the ORM (which raises SynchronousOnlyOperation on the event loop)."""
    kind, _, username = raw.partition(":")
    if kind != "session":
        raise AuthenticationError("not one of our session tokens")
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise AuthenticationError("no such session")
    logins = [account.login for account in user.accounts.all()]
    return Identity(str(user.pk), username, logins, int(time.time() + 60) * 1000, int(time.time()))


async def async_authenticator(raw: str) -> Identity:
    if not raw.startswith("async:"):
        raise AuthenticationError("not one of our tokens")
    user_id, _, logins = raw.removeprefix("async:").partition(":")
    return Identity(user_id, f"user-{user_id}", logins.split(","), int(time.time() + 60) * 1000)


class AsyncCallableObject:
    async def __call__(self, raw: str) -> Identity:
        return await async_authenticator(raw)


async def test_a_sync_authenticator_runs_off_the_event_loop(make_user):
    await make_user("mona", ["4012"])
    with authenticator_setting("tests.test_token_authenticator.sync_authenticator"):
        reply, client = await authorize("session:mona")
        assert reply["event"] == "authorized" and reply["data"]["logins"] == ["4012"], reply
        await client.close()
        reply, code = await refused("session:nobody")
        assert reply["data"] == {"code": "auth_failed", "message": "no such session"}
        assert code == CloseCode.AUTH_FAILED


@pytest.mark.parametrize("authenticator", [async_authenticator, AsyncCallableObject()])
async def test_an_async_authenticator_is_awaited(authenticator):
    with authenticator_setting(authenticator):
        reply, client = await authorize("async:77:5001,5002,5001")
        assert reply["data"]["user"] == "user-77"
        assert reply["data"]["logins"] == ["5001", "5002"]
        await client.close()


def returns_a_dict(raw: str) -> Any:
    return {"user_id": "1", "logins": ["1001"]}


def raises_a_bug(raw: str) -> Identity:
    raise KeyError("claims")


def database_down(raw: str) -> Identity:
    raise OperationalError('connection to server at "10.1.2.3", port 5432 failed')


async def raises_unavailable(raw: str) -> Identity:
    raise Unavailable("our token service is down")


@pytest.mark.parametrize(
    ("authenticator", "code", "close"),
    [
        (returns_a_dict, "internal_error", CloseCode.UNAVAILABLE),
        (raises_a_bug, "internal_error", CloseCode.UNAVAILABLE),
        (database_down, "unavailable", CloseCode.UNAVAILABLE),
        (raises_unavailable, "unavailable", CloseCode.UNAVAILABLE),
    ],
)
async def test_a_failing_authenticator_gets_a_documented_error_and_close(
    authenticator, code, close, caplog
):
    """A host bug or outage: the documented error and 4008, no traceback or driver
    text to the client (the log has them), and the server keeps serving."""
    with authenticator_setting(authenticator):
        reply, closed = await refused("anything")
    assert reply["event"] == "error" and reply["data"]["code"] == code, reply
    assert closed == close
    assert "10.1.2.3" not in json.dumps(reply) and "KeyError" not in json.dumps(reply)
    with authenticator_setting(async_authenticator):
        reply, client = await authorize("async:1:1")
        assert reply["event"] == "authorized"
        await client.close()


async def test_an_expired_identity_is_refused_whatever_the_authenticator():
    async def expired(raw: str) -> Identity:
        return Identity("5", "old", ["1"], int(time.time() - 1) * 1000)

    with authenticator_setting(expired):
        reply, code = await refused("t")
    assert reply["data"] == {"code": "auth_failed", "message": "Token is expired"}
    assert code == CloseCode.AUTH_FAILED


async def test_a_revoked_users_tokens_are_refused_whatever_the_authenticator(make_user):
    """revoke_user covers tokens issued up to it (and tokens with no iat), for a host's
    authenticator as for simplejwt's; a token issued afterwards is accepted."""
    user = await make_user("nora", ["4013"])
    before = int(time.time()) - 10

    async def issued(raw: str) -> Identity:
        issued_at = {"before": before, "none": 0, "after": int(time.time()) + 5}[raw]
        return Identity(
            str(user.user_id), "nora", ["4013"], int(time.time() + 60) * 1000, issued_at
        )

    with authenticator_setting(issued):
        reply, client = await authorize("before")
        assert reply["event"] == "authorized"
        await arevoke_user(user.user_id)
        assert await client.recv_close() == CloseCode.REVOKED
        for token in ("before", "none"):
            reply, code = await refused(token)
            assert reply["data"] == {"code": "auth_failed", "message": "token was revoked"}
            assert code == CloseCode.AUTH_FAILED
        reply, client = await authorize("after")
        assert reply["event"] == "authorized"
        await client.close()


def test_is_revoked_is_the_check_for_a_hosts_own_views(django_user_model):
    """The same rule for a host's refresh or login view: revoked at or after ``iat``."""
    user = django_user_model.objects.create_user("olga", password="pw")
    issued = time.time() - 10
    assert not is_revoked(user, issued)
    assert not is_revoked(user.pk, None)
    revoke_user(user)
    assert is_revoked(user, issued)
    assert is_revoked(user.pk, dt.datetime.fromtimestamp(issued, tz=dt.UTC))
    assert is_revoked(user, None)
    assert not is_revoked(user, time.time() + 5)
    assert async_to_sync(ais_revoked)(user, issued)


# --- configuration ----------------------------------------------------------------------


def test_check_e013_names_an_authenticator_that_cannot_be_imported():
    for value in ("tests.test_token_authenticator.no_such_thing", 42):
        with override_settings(BROKER_WS=broker_ws_settings(TOKEN_AUTHENTICATOR=value)):
            assert [m.id for m in check_settings()] == ["broker_ws.E013"], value
    with override_settings(BROKER_WS=broker_ws_settings(TOKEN_AUTHENTICATOR=OWN_TOKENS)):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"logins": "1001"}, TypeError),
        ({"logins": [1001]}, TypeError),
        ({"logins": [""]}, TypeError),
        ({"user_id": 5}, TypeError),
        ({"expires_ms": int(time.time() + 60)}, ValueError),  # seconds by mistake
        ({"expires_ms": 1.7e12}, TypeError),
        ({"issued_at": -1}, TypeError),
    ],
)
def test_identity_refuses_a_hosts_mistakes(fields, error):
    values = {"user_id": "5", "username": "u", "logins": ["1001"], "expires_ms": 2_000_000_000_000}
    with pytest.raises(error):
        Identity(**{**values, **fields})


def test_jwt_authenticator_refuses_an_unsafe_configuration():
    with pytest.raises(ValueError, match="algorithms"):
        JWTAuthenticator(key=SECRET, algorithms=[])
    with pytest.raises(ValueError, match="exactly one"):
        JWTAuthenticator(key=SECRET, jwks_url="https://x.test/jwks", algorithms=["RS256"])
    with pytest.raises(ValueError, match="exactly one"):
        JWTAuthenticator(algorithms=["HS256"])
