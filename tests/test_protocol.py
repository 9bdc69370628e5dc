"""Protocol v1 as a client sees it: StreamConsumer driven over WebsocketCommunicator.

One behaviour per test. Nothing here sleeps and hopes: tests wait for the
expected frame with a timeout, and prove that something does not arrive by
sending a later marker (a ping, or a quote on another symbol) and asserting
that the marker is the next thing received.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from typing import Any

import jwt
import orjson
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from broker_ws.publish.api import apublish_quote
from broker_ws.session.hub import get_hub
from tests.conftest import TIMEOUT, Client, broker_ws_settings

TS = 1_700_000_000_000
EXOTIC_SYMBOLS = ["BTC/USD", "#AAPL", "EURUSD.m", "US 500", "日経225", "S" * 200]


# --- helpers -------------------------------------------------------------


async def expect_error(client: Client, code: str) -> dict[str, Any]:
    """Receive the next frame and check it is an error reply with ``code``."""
    text = await client.recv_text()
    assert text.startswith("{"), text
    reply = orjson.loads(text)
    assert isinstance(reply, dict), reply
    assert reply["event"] == "error", reply
    data = reply["data"]
    assert isinstance(data, dict), reply
    assert data["code"] == code, reply
    assert isinstance(data["message"], str), reply
    assert data["message"], reply
    return data  # type: ignore[no-any-return]


async def expect_close(client: Client, code: int, timeout: float = TIMEOUT) -> None:
    """The very next thing the server does is close with ``code``."""
    message = await client.ws.receive_output(timeout)
    assert message["type"] == "websocket.close", message
    assert message.get("code") == code, message


async def assert_open(client: Client) -> None:
    """The session still answers: a ping is the next thing answered, with pong."""
    await client.send("ping")
    assert await client.recv_text() == "pong"


def quote_frame(symbol: str, bid: float, ask: float, ts: int = TS) -> list[Any]:
    return ["t", symbol, bid, ask, ts]


def claims(token: str) -> dict[str, Any]:
    """A token's payload, without verifying it."""
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def _mint_access(user_id: int, lifetime: dt.timedelta | None = None, **extra: Any) -> str:
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import AccessToken

    token = AccessToken.for_user(get_user_model().objects.get(pk=user_id))
    if lifetime is not None:
        token.set_exp(lifetime=lifetime)
    for key, value in extra.items():
        token[key] = value
    return str(token)


async def mint_access(user_id: int, lifetime: dt.timedelta | None = None, **extra: Any) -> str:
    """A signed access token for an existing user, with lifetime or claims changed."""
    return await database_sync_to_async(_mint_access)(user_id, lifetime, **extra)


def _delete_user(user_id: int) -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(pk=user_id).delete()


# --- fixtures --------------------------------------------------------------


@pytest.fixture
async def alice(make_user: Any) -> Any:
    """A user with two account logins, created in an unsorted order."""
    return await make_user("alice", ["1002", "1001"])


@pytest.fixture
async def session(client_factory: Any, alice: Any) -> Client:
    """A connected session authorized as alice (default in-process backend)."""
    client = await client_factory()
    await client.authorize(alice.token)
    return client


@pytest.fixture
async def hub_session(backend: str, client_factory: Any, alice: Any) -> Client:
    """A session authorized as alice, on the parametrized backend (memory, Redis)."""
    client = await client_factory()
    await client.authorize(alice.token)
    return client


# --- ping ------------------------------------------------------------------


async def test_ping_before_auth_gets_pong(client_factory):
    """A plain-text ping on a fresh session is answered with a plain-text pong."""
    client = await client_factory()
    await client.send("ping")
    assert await client.recv_text() == "pong"


@pytest.mark.django_db(transaction=True)
async def test_ping_after_auth_gets_pong(session):
    """A ping on an authorized session is answered with pong."""
    await session.send("ping")
    assert await session.recv_text() == "pong"


# --- authorization ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_authorize_valid_token_replies_authorized(backend, client_factory, alice):
    """A valid access token gets `authorized` with user, logins, expires (ms) and seq."""
    client = await client_factory()
    await client.send({"authorization": alice.token})
    reply = await client.recv()
    assert reply["event"] == "authorized"
    data = reply["data"]
    assert data["user"] == "alice"
    assert data["logins"] == ["1001", "1002"]
    assert data["expires"] == claims(alice.token)["exp"] * 1000
    assert sorted(data["seq"]) == ["1001", "1002"]
    assert all(isinstance(seq, int) and seq >= 0 for seq in data["seq"].values())


@pytest.mark.django_db(transaction=True)
async def test_authorize_user_without_accounts_has_no_logins(client_factory, make_user):
    """A user with no Account gets `authorized` with empty logins and seq."""
    user = await make_user("bob", [])
    client = await client_factory()
    data = await client.authorize(user.token)
    assert (data["user"], data["logins"], data["seq"]) == ("bob", [], {})


@pytest.mark.django_db(transaction=True)
async def test_authorize_refresh_token_fails(client_factory, alice):
    """A refresh token used as an access token is refused: auth_failed, close 4001."""
    client = await client_factory()
    await client.send({"authorization": alice.refresh})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
async def test_authorize_wrong_signing_key_fails(client_factory, alice):
    """A token with valid claims signed with another key is refused with 4001."""
    forged = jwt.encode(claims(alice.token), "not-the-secret-key-" * 3, algorithm="HS256")
    client = await client_factory()
    await client.send({"authorization": forged})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
async def test_authorize_alg_none_fails(client_factory, alice):
    """An unsigned `alg: none` token with valid claims is refused with 4001."""
    header = {"alg": "none", "typ": "JWT"}
    forged = f"{b64url(header)}.{b64url(claims(alice.token))}."
    client = await client_factory()
    await client.send({"authorization": forged})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
async def test_authorize_other_algorithm_fails(client_factory, alice, algorithm):
    """A token signed with the right key but another algorithm is refused with 4001."""
    forged = jwt.encode(claims(alice.token), settings.SECRET_KEY, algorithm=algorithm)
    client = await client_factory()
    await client.send({"authorization": forged})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
async def test_authorize_expired_token_fails(client_factory, alice):
    """An access token whose exp has passed is refused with 4001."""
    token = await mint_access(alice.user_id, lifetime=-dt.timedelta(minutes=1))
    client = await client_factory()
    await client.send({"authorization": token})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
async def test_authorize_not_yet_valid_token_fails(client_factory, alice):
    """An access token whose nbf is in the future is refused with 4001 (PyJWT checks nbf)."""
    token = await mint_access(alice.user_id, nbf=int(time.time()) + 600)
    client = await client_factory()
    await client.send({"authorization": token})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
async def test_authorize_inactive_user_fails(client_factory, make_user):
    """A valid token of an inactive user is refused with 4001."""
    user = await make_user("sleepy", ["2001"], active=False)
    client = await client_factory()
    await client.send({"authorization": user.token})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.django_db(transaction=True)
async def test_authorize_deleted_user_fails(client_factory, alice):
    """A valid token of a user deleted since it was issued is refused with 4001."""
    await database_sync_to_async(_delete_user)(alice.user_id)
    client = await client_factory()
    await client.send({"authorization": alice.token})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "....", "Bearer x", "\u00e9\u0000"],
)
async def test_authorize_garbage_fails(client_factory, garbage):
    """A string that is not a JWT at all is refused with 4001."""
    client = await client_factory()
    await client.send({"authorization": garbage})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


@pytest.mark.parametrize("value", ["", 123, None, ["token"], {"token": "x"}])
async def test_authorize_without_usable_token_fails_like_a_bad_token(client_factory, value):
    """An authorization value that is not a non-empty string is a refused token:
    auth_failed and 4001, not a bad_message left open until the 4002 invites a retry."""
    client = await client_factory()
    await client.send({"authorization": value})
    await expect_error(client, "auth_failed")
    await expect_close(client, 4001)


async def test_authorize_huge_token_is_message_too_large(client_factory):
    """A token message over MAX_MESSAGE_BYTES gets message_too_large; the session stays."""
    client = await client_factory()
    await client.send({"authorization": "x" * 20_000})
    await expect_error(client, "message_too_large")
    await assert_open(client)


async def test_message_too_large_counts_utf8_bytes(client_factory):
    """A message under the limit in characters but over it in UTF-8 bytes is too large."""
    limit = 16_384
    with override_settings(BROKER_WS=broker_ws_settings(MAX_MESSAGE_BYTES=limit)):
        client = await client_factory()
        text = "€" * (limit // 3 + 10)  # fewer characters than the limit, more bytes
        assert len(text) < limit < len(text.encode())
        await client.send(text)
        await expect_error(client, "message_too_large")
    await assert_open(client)


@pytest.mark.django_db(transaction=True)
async def test_authorize_different_user_is_user_mismatch(session, make_user):
    """Another user's token on an authorized session gets user_mismatch; the session stays."""
    bob = await make_user("bob", ["3001"])
    await session.send({"authorization": bob.token})
    await expect_error(session, "user_mismatch")
    await assert_open(session)


@pytest.mark.django_db(transaction=True)
async def test_refresh_same_user_replies_authorized_with_new_expiry(session, alice):
    """A fresh token of the same user is acknowledged with `authorized` and its new expiry."""
    fresh = await mint_access(alice.user_id, lifetime=dt.timedelta(hours=2))
    data = await session.authorize(fresh)
    assert data["expires"] == claims(fresh)["exp"] * 1000
    assert data["expires"] > claims(alice.token)["exp"] * 1000
    assert (data["user"], data["logins"]) == ("alice", ["1001", "1002"])


# --- timers ------------------------------------------------------------------


async def test_auth_timeout_closes_4002(client_factory):
    """A session that does not authorize within AUTH_TIMEOUT is closed with 4002."""
    with override_settings(BROKER_WS=broker_ws_settings(AUTH_TIMEOUT=0.2)):
        client = await client_factory()
        await expect_close(client, 4002, timeout=3)


@pytest.mark.django_db(transaction=True)
async def test_auth_timeout_cancelled_by_authorization(client_factory, alice):
    """An authorized session outlives AUTH_TIMEOUT, which closes a later idle session."""
    with override_settings(BROKER_WS=broker_ws_settings(AUTH_TIMEOUT=0.5)):
        authorized = await client_factory()
        await authorized.authorize(alice.token)
        idle = await client_factory()
        await expect_close(idle, 4002, timeout=3)
    # The authorized session's own auth deadline was earlier than idle's.
    await assert_open(authorized)


@pytest.mark.django_db(transaction=True)
async def test_token_expiry_closes_4003(client_factory, alice):
    """An authorized session is closed with 4003 when its access token expires."""
    token = await mint_access(alice.user_id, lifetime=dt.timedelta(seconds=2))
    client = await client_factory()
    data = await client.authorize(token)
    assert data["expires"] <= (time.time() + 2) * 1000
    await expect_close(client, 4003, timeout=4)
    assert time.time() * 1000 >= data["expires"] - 50


@pytest.mark.django_db(transaction=True)
async def test_refresh_postpones_expiry_close(client_factory, alice):
    """An in-band refresh before expiry moves the 4003 close to the new token's expiry."""
    short = await mint_access(alice.user_id, lifetime=dt.timedelta(seconds=2))
    longer = await mint_access(alice.user_id, lifetime=dt.timedelta(seconds=4))
    first_expiry = claims(short)["exp"]
    client = await client_factory()
    await client.authorize(short)
    data = await client.authorize(longer)
    assert data["expires"] == claims(longer)["exp"] * 1000
    await expect_close(client, 4003, timeout=6)
    # exp is whole seconds: the longer token expires at least 2 s after the short one.
    assert time.time() >= first_expiry + 1


# --- subscribe before auth ---------------------------------------------------


async def test_subscribe_before_auth_is_not_authorized(client_factory):
    """subscribe before authorization gets not_authorized; the session stays."""
    client = await client_factory()
    await client.send({"event": "subscribe", "data": ["EURUSD"]})
    await expect_error(client, "not_authorized")
    await assert_open(client)


async def test_unsubscribe_before_auth_is_not_authorized(client_factory):
    """unsubscribe before authorization gets not_authorized; the session stays."""
    client = await client_factory()
    await client.send({"event": "unsubscribe", "data": ["EURUSD"]})
    await expect_error(client, "not_authorized")
    await assert_open(client)


# --- subscribe and quotes (memory and Redis) --------------------------------


@pytest.mark.django_db(transaction=True)
async def test_subscribe_replies_subscribed_then_last_quotes(hub_session):
    """subscribe answers `subscribed`, then the last quote of each symbol as `t` frames."""
    await apublish_quote("EURUSD", 1.0845, 1.0847, ts=TS)
    await apublish_quote("BTCUSD", 64000.5, 64010.25, ts=TS + 1)
    await hub_session.send({"event": "subscribe", "data": ["EURUSD", "BTCUSD"]})
    assert await hub_session.recv() == {"event": "subscribed", "data": ["EURUSD", "BTCUSD"]}
    snapshot = [await hub_session.recv(), await hub_session.recv()]
    assert sorted(snapshot) == sorted(
        [quote_frame("EURUSD", 1.0845, 1.0847), quote_frame("BTCUSD", 64000.5, 64010.25, TS + 1)]
    )


@pytest.mark.django_db(transaction=True)
async def test_subscribe_sends_only_the_latest_quote(hub_session):
    """The snapshot is the last quote published, not an older one."""
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    await apublish_quote("EURUSD", 1.3, 1.4, ts=TS + 1)
    await hub_session.subscribe("EURUSD")
    assert await hub_session.recv() == quote_frame("EURUSD", 1.3, 1.4, TS + 1)
    await assert_open(hub_session)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_without_last_quote_sends_no_snapshot(hub_session):
    """A symbol never quoted is subscribed and no `t` frame follows."""
    assert await hub_session.subscribe("NEVERQUOTED") == ["NEVERQUOTED"]
    await assert_open(hub_session)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_then_live_quote_arrives(hub_session):
    """A quote published after subscribing arrives as a `t` frame."""
    await hub_session.subscribe("EURUSD")
    await apublish_quote("EURUSD", 1.0845, 1.0847, ts=TS)
    assert await hub_session.recv() == quote_frame("EURUSD", 1.0845, 1.0847)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_live_quotes_keep_publishing_order(hub_session):
    """Quotes of one symbol arrive in the order they were published."""
    await hub_session.subscribe("EURUSD")
    for i in range(20):
        await apublish_quote("EURUSD", 1 + i, 2 + i, ts=TS + i)
    received = [await hub_session.recv() for _ in range(20)]
    assert received == [quote_frame("EURUSD", 1 + i, 2 + i, TS + i) for i in range(20)]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_twice_sends_no_second_snapshot(hub_session):
    """Subscribing again to a subscribed symbol is acknowledged without a repeated snapshot."""
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    await hub_session.subscribe("EURUSD")
    assert await hub_session.recv() == quote_frame("EURUSD", 1.1, 1.2)
    assert await hub_session.subscribe("EURUSD") == ["EURUSD"]
    await assert_open(hub_session)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("symbol", EXOTIC_SYMBOLS)
async def test_subscribe_exotic_symbol_gets_snapshot(hub_session, symbol):
    """Slashes, '#', dots, spaces, non-ASCII and 200 characters: the last quote arrives."""
    await apublish_quote(symbol, 10.5, 10.75, ts=TS)
    assert await hub_session.subscribe(symbol) == [symbol]
    assert await hub_session.recv() == quote_frame(symbol, 10.5, 10.75)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("symbol", EXOTIC_SYMBOLS)
async def test_subscribe_exotic_symbol_gets_live_quotes(hub_session, symbol):
    """Slashes, '#', dots, spaces, non-ASCII and 200 characters: live quotes arrive."""
    await hub_session.subscribe(symbol)
    await apublish_quote(symbol, 20.5, 20.75, ts=TS)
    assert await hub_session.recv() == quote_frame(symbol, 20.5, 20.75)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_does_not_fold_case(hub_session):
    """A session subscribed to `eurusd` gets neither the snapshot nor live quotes of `EURUSD`."""
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    assert await hub_session.subscribe("eurusd") == ["eurusd"]
    await apublish_quote("EURUSD", 1.3, 1.4, ts=TS + 1)
    await apublish_quote("eurusd", 9.1, 9.2, ts=TS + 2)
    assert await hub_session.recv() == quote_frame("eurusd", 9.1, 9.2, TS + 2)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_similar_encodings_do_not_cross(hub_session):
    """`btc_usd` and `btc/usd` are different symbols: quotes of one never reach the other."""
    await hub_session.subscribe("btc_usd")
    await apublish_quote("btc/usd", 1.0, 2.0, ts=TS)
    await apublish_quote("btc_usd", 3.0, 4.0, ts=TS + 1)
    assert await hub_session.recv() == quote_frame("btc_usd", 3.0, 4.0, TS + 1)


@pytest.mark.django_db(transaction=True)
async def test_quote_reaches_every_subscribed_session(backend, client_factory, alice):
    """One quote reaches every session subscribed to its symbol."""
    clients = []
    for _ in range(3):
        client = await client_factory()
        await client.authorize(alice.token)
        await client.subscribe("EURUSD")
        clients.append(client)
    await apublish_quote("EURUSD", 1.5, 1.6, ts=TS)
    assert [await client.recv() for client in clients] == [quote_frame("EURUSD", 1.5, 1.6)] * 3


# --- invalid symbols and limits ------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "bad",
    ["", "EUR\x00USD", "EUR\nUSD", "\tEURUSD", "EURUSD\x1b", "\x7f", "L" * 257],
    ids=["empty", "nul", "newline", "tab", "escape", "del", "too-long"],
)
async def test_subscribe_invalid_symbol_is_refused_others_subscribed(hub_session, bad):
    """An invalid symbol is named in an invalid_symbols error; the valid ones are subscribed."""
    await hub_session.send({"event": "subscribe", "data": ["EURUSD", bad]})
    assert await hub_session.recv() == {"event": "subscribed", "data": ["EURUSD"]}
    data = await expect_error(hub_session, "invalid_symbols")
    assert data["symbols"] == [bad]
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    assert await hub_session.recv() == quote_frame("EURUSD", 1.1, 1.2)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_symbol_longer_than_setting_is_refused(session):
    """A symbol longer than SYMBOL_MAX_LENGTH is refused; one at the limit is accepted."""
    with override_settings(BROKER_WS=broker_ws_settings(SYMBOL_MAX_LENGTH=8)):
        await session.send({"event": "subscribe", "data": ["A" * 8, "B" * 9]})
        assert await session.recv() == {"event": "subscribed", "data": ["A" * 8]}
        data = await expect_error(session, "invalid_symbols")
    assert data["symbols"] == ["B" * 9]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_only_invalid_symbols_subscribes_none(session):
    """A subscribe with only invalid symbols gets an empty `subscribed` and the error."""
    await session.send({"event": "subscribe", "data": ["", "\x01"]})
    assert await session.recv() == {"event": "subscribed", "data": []}
    data = await expect_error(session, "invalid_symbols")
    assert data["symbols"] == ["", "\x01"]
    await assert_open(session)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_c1_control_character_is_refused(session):
    """A symbol holding a C1 control character (U+0085) is refused like other controls."""
    await session.send({"event": "subscribe", "data": ["EURUSD", "EUR\x85USD"]})
    assert await session.recv() == {"event": "subscribed", "data": ["EURUSD"]}
    data = await expect_error(session, "invalid_symbols")
    assert data["symbols"] == ["EUR\x85USD"]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_symbol_not_in_symbols_list_is_refused(hub_session):
    """With BROKER_WS['SYMBOLS'] a list, other symbols are refused as invalid_symbols."""
    with override_settings(BROKER_WS=broker_ws_settings(SYMBOLS=["EURUSD", "BTC/USD"])):
        await hub_session.send({"event": "subscribe", "data": ["BTC/USD", "GBPUSD", "eurusd"]})
        assert await hub_session.recv() == {"event": "subscribed", "data": ["BTC/USD"]}
        data = await expect_error(hub_session, "invalid_symbols")
    assert data["symbols"] == ["GBPUSD", "eurusd"]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_over_limit_refuses_the_excess(hub_session):
    """Symbols past MAX_SUBSCRIPTIONS get too_many_subscriptions; the first are subscribed."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SUBSCRIPTIONS=2)):
        await hub_session.send({"event": "subscribe", "data": ["S1", "S2", "S3"]})
        assert await hub_session.recv() == {"event": "subscribed", "data": ["S1", "S2"]}
        data = await expect_error(hub_session, "too_many_subscriptions")
    assert data["symbols"] == ["S3"]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_over_limit_does_not_subscribe_the_excess(hub_session):
    """A symbol refused for the limit receives no quotes."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SUBSCRIPTIONS=1)):
        await hub_session.send({"event": "subscribe", "data": ["S1", "S2"]})
        assert await hub_session.recv() == {"event": "subscribed", "data": ["S1"]}
        await expect_error(hub_session, "too_many_subscriptions")
        await apublish_quote("S2", 1.0, 2.0, ts=TS)
        await apublish_quote("S1", 3.0, 4.0, ts=TS)
        assert await hub_session.recv() == quote_frame("S1", 3.0, 4.0)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_when_full_refuses_new_symbols(session):
    """Once MAX_SUBSCRIPTIONS is reached, a later subscribe to a new symbol is refused."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SUBSCRIPTIONS=2)):
        await session.subscribe("S1", "S2")
        await session.send({"event": "subscribe", "data": ["S3"]})
        assert await session.recv() == {"event": "subscribed", "data": []}
        data = await expect_error(session, "too_many_subscriptions")
    assert data["symbols"] == ["S3"]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_again_when_full_is_not_counted_twice(session):
    """Re-subscribing to a symbol already held does not count against the limit."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SUBSCRIPTIONS=2)):
        await session.subscribe("S1", "S2")
        assert await session.subscribe("S2", "S1") == ["S2", "S1"]
        await assert_open(session)


@pytest.mark.django_db(transaction=True)
async def test_unsubscribe_frees_room_under_limit(session):
    """After an unsubscribe, a new symbol fits under MAX_SUBSCRIPTIONS again."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SUBSCRIPTIONS=1)):
        await session.subscribe("S1")
        await session.send({"event": "unsubscribe", "data": ["S1"]})
        assert await session.recv() == {"event": "unsubscribed", "data": ["S1"]}
        assert await session.subscribe("S2") == ["S2"]
        await assert_open(session)


# --- unsubscribe ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_unsubscribe_replies_unsubscribed(hub_session):
    """unsubscribe answers `unsubscribed` with the symbols."""
    await hub_session.subscribe("EURUSD", "BTC/USD")
    await hub_session.send({"event": "unsubscribe", "data": ["EURUSD"]})
    assert await hub_session.recv() == {"event": "unsubscribed", "data": ["EURUSD"]}


@pytest.mark.django_db(transaction=True)
async def test_unsubscribe_stops_quotes_of_that_symbol(hub_session):
    """After unsubscribe no quote of that symbol arrives; a later one on another symbol does."""
    await hub_session.subscribe("EURUSD", "BTC/USD")
    await hub_session.send({"event": "unsubscribe", "data": ["EURUSD"]})
    assert await hub_session.recv() == {"event": "unsubscribed", "data": ["EURUSD"]}
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    await apublish_quote("BTC/USD", 64000.0, 64001.0, ts=TS + 1)
    assert await hub_session.recv() == quote_frame("BTC/USD", 64000.0, 64001.0, TS + 1)


@pytest.mark.django_db(transaction=True)
async def test_unsubscribe_leaves_other_sessions_subscribed(backend, client_factory, alice):
    """One session's unsubscribe does not stop the quotes of another session on that symbol."""
    leaving, staying = await client_factory(), await client_factory()
    for client in (leaving, staying):
        await client.authorize(alice.token)
        await client.subscribe("EURUSD")
    await leaving.send({"event": "unsubscribe", "data": ["EURUSD"]})
    assert await leaving.recv() == {"event": "unsubscribed", "data": ["EURUSD"]}
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    assert await staying.recv() == quote_frame("EURUSD", 1.1, 1.2)
    await assert_open(leaving)


@pytest.mark.django_db(transaction=True)
async def test_resubscribe_after_unsubscribe_gets_snapshot(hub_session):
    """Subscribing again after an unsubscribe sends the last quote again."""
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    await hub_session.subscribe("EURUSD")
    assert await hub_session.recv() == quote_frame("EURUSD", 1.1, 1.2)
    await hub_session.send({"event": "unsubscribe", "data": ["EURUSD"]})
    assert await hub_session.recv() == {"event": "unsubscribed", "data": ["EURUSD"]}
    await hub_session.subscribe("EURUSD")
    assert await hub_session.recv() == quote_frame("EURUSD", 1.1, 1.2)


# --- malformed messages: error reply, session stays open ---------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", "bad_json"),
        ('{"event": "subscribe", "data": ["EURUSD"]', "bad_json"),
        ("PING", "bad_json"),
        ("ping ", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"subscribe"', "bad_message"),
        ("42", "bad_message"),
        ("null", "bad_message"),
        ("{}", "bad_message"),
        ('{"event": 5}', "bad_message"),
        ('{"data": ["EURUSD"]}', "bad_message"),
        ('{"event": "subscribe_all", "data": ["EURUSD"]}', "unknown_event"),
        ('{"event": "SUBSCRIBE", "data": ["EURUSD"]}', "unknown_event"),
    ],
)
async def test_malformed_message_gets_error_and_session_stays(client_factory, text, code):
    """Bad JSON, non-object JSON and unknown events each get their error code; the session stays."""
    client = await client_factory()
    await client.send(text)
    await expect_error(client, code)
    await assert_open(client)


async def test_empty_text_frame_is_bad_json(client_factory):
    """An empty text frame gets bad_json; the session stays."""
    client = await client_factory()
    # send_to refuses empty text, so the frame is handed to the app directly.
    await client.ws.send_input({"type": "websocket.receive", "text": ""})
    await expect_error(client, "bad_json")
    await assert_open(client)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "message",
    [
        {"event": "subscribe", "data": "EURUSD"},
        {"event": "subscribe", "data": {"EURUSD": True}},
        {"event": "subscribe", "data": []},
        {"event": "subscribe"},
        {"event": "subscribe", "data": ["EURUSD", 5]},
        {"event": "subscribe", "data": [None]},
        {"event": "subscribe", "data": [["EURUSD"]]},
        {"event": "unsubscribe", "data": "EURUSD"},
        {"event": "unsubscribe", "data": [1.5]},
    ],
)
async def test_subscribe_wrong_types_is_bad_message(session, message):
    """subscribe/unsubscribe with data that is not a list of strings gets bad_message."""
    await session.send(message)
    await expect_error(session, "bad_message")
    await assert_open(session)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_wrong_types_subscribes_nothing(hub_session):
    """A subscribe refused for a non-string symbol subscribes none of its symbols."""
    await hub_session.send({"event": "subscribe", "data": ["EURUSD", 5]})
    await expect_error(hub_session, "bad_message")
    await hub_session.subscribe("GBPUSD")
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    await apublish_quote("GBPUSD", 1.3, 1.4, ts=TS)
    assert await hub_session.recv() == quote_frame("GBPUSD", 1.3, 1.4)


@pytest.mark.django_db(transaction=True)
async def test_unknown_event_after_auth_gets_error(session):
    """An unknown event on an authorized session gets unknown_event; the session stays."""
    await session.send({"event": "history", "data": ["EURUSD"]})
    await expect_error(session, "unknown_event")
    await assert_open(session)


@pytest.mark.parametrize("payload", [b"\x00\x01\x02", b"ping", b'{"event":"subscribe"}'])
async def test_binary_frame_is_binary_not_supported(client_factory, payload):
    """A binary frame gets binary_not_supported; the session stays."""
    client = await client_factory()
    await client.send(payload)
    await expect_error(client, "binary_not_supported")
    await assert_open(client)


@pytest.mark.django_db(transaction=True)
async def test_binary_frame_after_auth_is_binary_not_supported(session):
    """A binary frame on an authorized session gets binary_not_supported; the session stays."""
    await session.send(b"\xff\xfe")
    await expect_error(session, "binary_not_supported")
    await assert_open(session)


# --- handshake: path and Origin --------------------------------------------------


@pytest.fixture
async def connect_raw() -> Any:
    """``await connect_raw(path=..., headers=...)`` → whether the handshake was accepted."""
    clients: list[Client] = []

    async def connect(**kwargs: Any) -> bool:
        client = Client(**kwargs)
        clients.append(client)
        accepted, _ = await client.ws.connect(timeout=TIMEOUT)
        return accepted  # type: ignore[no-any-return]

    yield connect
    for client in clients:
        await client.close()


@pytest.mark.parametrize("path", ["/ws", "/ws/", "/stream", "/index.html"])
async def test_handshake_other_path_is_refused(connect_raw, path):
    """The stream lives at `/`; any other path is refused at the handshake."""
    assert await connect_raw(path=path) is False


async def test_handshake_root_path_is_accepted(connect_raw):
    """The root path is accepted."""
    assert await connect_raw(path="/") is True


ORIGINS = broker_ws_settings(ALLOWED_ORIGINS=["broker.example", ".trade.example"])


@override_settings(BROKER_WS=ORIGINS)
async def test_handshake_without_origin_is_accepted(connect_raw):
    """A client that sends no Origin (apps, bots) is accepted."""
    assert await connect_raw(headers=[(b"user-agent", b"bot/1.0")]) is True


@override_settings(BROKER_WS=ORIGINS)
@pytest.mark.parametrize(
    "origin",
    [b"https://broker.example", b"http://broker.example:8080", b"https://app.trade.example"],
)
async def test_handshake_allowed_origin_is_accepted(connect_raw, origin):
    """A browser Origin matching ALLOWED_ORIGINS (exact or subdomain pattern) is accepted."""
    assert await connect_raw(headers=[(b"origin", origin)]) is True


@override_settings(BROKER_WS=ORIGINS)
@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.example",
        b"https://broker.example.evil.example",
        b"https://notbroker.example",
        b"null",
        b"not a url",
    ],
)
async def test_handshake_disallowed_origin_is_refused(connect_raw, origin):
    """A browser Origin not matching ALLOWED_ORIGINS is refused at the handshake."""
    assert await connect_raw(headers=[(b"origin", origin)]) is False


@override_settings(
    ALLOWED_HOSTS=["broker.example"], BROKER_WS=broker_ws_settings(ALLOWED_ORIGINS=None)
)
async def test_handshake_origin_falls_back_to_allowed_hosts(connect_raw):
    """With ALLOWED_ORIGINS None, a browser Origin is checked against ALLOWED_HOSTS."""
    assert await connect_raw(headers=[(b"origin", b"https://broker.example")]) is True
    assert await connect_raw(headers=[(b"origin", b"https://evil.example")]) is False


# --- hub bookkeeping ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_closed_sessions_leave_nothing_behind_in_the_hub(backend, client_factory, alice):
    """Sessions that connect, authorize, subscribe and go away (the soak's 2 reconnects
    a second) leave no session, login, symbol or bus subscription behind: a
    long-running process does not grow with the sessions it has seen."""
    hub = await get_hub()
    baseline_wanted = set(getattr(hub.subscriber, "wanted", set()))
    for i in range(20):
        client = await client_factory()
        await client.authorize(alice.token)
        await client.subscribe(f"LEAK{i}", "EURUSD")
        await client.close()
    async with asyncio.timeout(TIMEOUT):
        while (
            hub.quotes.sessions
            or hub.users
            or hub.everyone
            or any(state.sessions for state in hub.logins.states.values())
        ):
            await asyncio.sleep(0.01)
        while set(getattr(hub.subscriber, "wanted", set())) != baseline_wanted:
            await asyncio.sleep(0.01)
    assert not hub.logins.states, hub.logins.states
    assert not hub.quotes.last_quote
