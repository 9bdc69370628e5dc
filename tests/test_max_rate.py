"""Throttled subscriptions (``"max_rate": R``) and per-user symbol entitlements
(``SYMBOL_ENTITLEMENTS``), protocol v1.1.

Rates are checked by counting frames against bounds the server guarantees (a
group sends at most once per interval of its event loop's clock), never against
how fast the test machine happens to be; waits have timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from django.db import DatabaseError
from django.test import override_settings

from broker_ws.auth.identity import Identity
from broker_ws.backends.memory import MemoryBackend
from broker_ws.checks import check_settings
from broker_ws.exceptions import ProtocolError
from broker_ws.publish.api import apublish_quote, apublish_status
from broker_ws.session.hub import get_hub
from broker_ws.session.quotes import QuoteFanout
from broker_ws.wire import channel_names, protocol
from broker_ws.wire.encoded import EncodedFrame
from tests.conftest import TIMEOUT, broker_ws_settings

TS = 1_700_000_000_000


def ch(symbol: str) -> str:
    """The symbol's quote channel (under the test's KEY_PREFIX)."""
    return channel_names.quote_channel(symbol)


def quote(symbol: str, bid: float, ts: int = TS) -> list[Any]:
    return ["t", symbol, bid, bid + 1, ts]


async def until(condition: Any, timeout: float = TIMEOUT) -> None:
    """Wait for ``condition()`` to hold, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def assert_idle(client: Any) -> None:
    """Nothing else was queued for the client: a ping is answered next."""
    await client.send("ping")
    assert await client.recv_text() == "pong"


async def subscribe(client: Any, *symbols: str, max_rate: Any = None) -> Any:
    message: dict[str, Any] = {"event": "subscribe", "data": list(symbols)}
    if max_rate is not None:
        message["max_rate"] = max_rate
    await client.send(message)
    reply = await client.recv()
    assert reply["event"] == "subscribed", reply
    return reply["data"]


@pytest.fixture
async def alice(make_user: Any) -> Any:
    return await make_user("alice", ["1001"])


@pytest.fixture
async def connect(backend: str, client_factory: Any, alice: Any) -> Any:
    """``await connect()``: a new session authorized as alice, on the parametrized
    backend (memory, Redis)."""

    async def make() -> Any:
        client = await client_factory()
        await client.authorize(alice.token)
        return client

    return make


# --- parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_rate", "interval_ms"),
    [(20, 50), (10, 100), (4, 250), (3, 350), (1, 1000), (0.5, 2000), (0.3, 3350), (0.1, 10000)],
)
def test_max_rate_becomes_an_interval_rounded_up_to_50_ms(
    max_rate: float, interval_ms: int
) -> None:
    command = protocol.parse(f'{{"event":"subscribe","data":["EURUSD"],"max_rate":{max_rate}}}')
    assert command == protocol.Subscribe(("EURUSD",), interval_ms)
    assert 1000 / interval_ms <= max_rate  # never more than asked for


def test_no_max_rate_or_null_is_unthrottled() -> None:
    assert protocol.parse('{"event":"subscribe","data":["A"]}') == protocol.Subscribe(("A",))
    null = '{"event":"subscribe","data":["A"],"max_rate":null}'
    assert protocol.parse(null) == protocol.Subscribe(("A",))


@pytest.mark.parametrize("max_rate", ["0", "-1", "0.05", "20.5", "1e9", '"5"', "true", "[]", "{}"])
def test_a_bad_max_rate_is_a_bad_message(max_rate: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.parse(f'{{"event":"subscribe","data":["A"],"max_rate":{max_rate}}}')
    assert raised.value.code == "bad_message"


@pytest.mark.django_db(transaction=True)
async def test_a_bad_max_rate_subscribes_nothing_and_the_session_stays(connect: Any) -> None:
    client = await connect()
    await client.send({"event": "subscribe", "data": ["EURUSD"], "max_rate": 0})
    reply = await client.recv()
    assert reply["data"]["code"] == "bad_message" and "max_rate" in reply["data"]["message"]
    await apublish_quote("EURUSD", 1.0, 2.0, ts=TS)
    await assert_idle(client)


# --- the fan-out's groups, alone ---------------------------------------------------


class Recorder:
    """A session that records what it is sent, frame objects included."""

    def __init__(self) -> None:
        self.closed = False
        self.sent: list[Any] = []

    async def push(self, frame: Any) -> None:
        self.sent.append(frame)

    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        self.sent.append(frame)
        return None

    async def push_status(self, key: str, frame: EncodedFrame) -> None:
        self.sent.append(frame)

    async def push_account(self, login: str, seq: int, frame: Any) -> None:
        self.sent.append((login, seq, frame))

    async def revoke(self, revoked_at: float) -> None:
        self.sent.append(("revoke", revoked_at))


def _spawn(coro: Any) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


async def test_one_group_per_symbol_and_rate_encodes_once_and_cleans_up() -> None:
    backend = MemoryBackend()
    subscriber = backend.connect(lambda channel, payload: None)
    await subscriber.start()
    released: list[list[str]] = []
    fanout = QuoteFanout(subscriber, _spawn, released.append)
    fast_a, fast_b, slow, plain = Recorder(), Recorder(), Recorder(), Recorder()
    await fanout.add(fast_a, ["EURUSD"], interval_ms=100)
    await fanout.add(fast_b, ["EURUSD"], interval_ms=100)
    await fanout.add(slow, ["EURUSD"], interval_ms=200)
    await fanout.add(plain, ["EURUSD"])
    groups = fanout.groups[ch("EURUSD")]
    assert set(groups) == {100, 200}
    assert fanout.sessions[ch("EURUSD")] == {groups[100], groups[200], plain}

    await fanout.deliver(ch("EURUSD"), '["t","EURUSD",1,2,0]')  # leading: everyone at once
    first = plain.sent[-1]
    assert fast_a.sent == fast_b.sent == slow.sent == [first]  # one encoding for all
    await fanout.deliver(ch("EURUSD"), '["t","EURUSD",3,4,0]')
    await fanout.deliver(ch("EURUSD"), '["t","EURUSD",5,6,0]')
    assert len(plain.sent) == 3 and len(fast_a.sent) == 1  # held for the interval
    await until(lambda: len(fast_a.sent) == 2)
    assert fast_a.sent[1] is fast_b.sent[1] is plain.sent[2]  # the latest, trailing
    await until(lambda: len(slow.sent) == 2)
    assert slow.sent[1] is plain.sent[2]

    group = groups[100]
    await fanout.deliver(ch("EURUSD"), '["t","EURUSD",7,8,0]')  # held: a timer runs
    fanout.remove(fast_a, ["EURUSD"])
    fanout.remove(fast_b, ["EURUSD"])
    assert group.closed and group._timer is None and 100 not in fanout.groups[ch("EURUSD")]
    fanout.remove(slow, ["EURUSD"])
    fanout.remove(plain, ["EURUSD"])
    assert fanout.groups == {} and fanout.throttled == {} and released == [[ch("EURUSD")]]
    await subscriber.close()


# --- sessions (memory and Redis) ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_throttled_session_gets_at_most_max_rate_quotes_and_the_last_one(
    connect: Any,
) -> None:
    """60 quotes over about 1.2 s: the unthrottled session gets all, in order; the two
    sessions at max_rate 5 (one quote per 200 ms) get the same quotes, increasing,
    no more than the elapsed time allows, and the last quote published."""
    plain, slow_a, slow_b = await connect(), await connect(), await connect()
    await subscribe(plain, "EURUSD")
    await subscribe(slow_a, "EURUSD", max_rate=5)
    await subscribe(slow_b, "EURUSD", max_rate=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(60):
        await apublish_quote("EURUSD", i, i + 1, ts=TS + i)
        await asyncio.sleep(0.02)

    assert [await plain.recv() for _ in range(60)] == [
        quote("EURUSD", i, TS + i) for i in range(60)
    ]
    received = []
    for client in (slow_a, slow_b):
        bids: list[float] = []
        while not bids or bids[-1] != 59:  # the last quote always arrives (trailing)
            frame = await client.recv(timeout=TIMEOUT)
            assert frame[:2] == ["t", "EURUSD"]
            bids.append(frame[2])
        received.append(bids)
    elapsed = loop.time() - started
    assert received[0] == received[1]  # one group: the same quotes
    bids = received[0]
    assert bids == sorted(set(bids))  # in order, none twice
    # Sends are at least 200 ms apart on the server's clock, all within `elapsed`.
    assert 2 <= len(bids) <= elapsed / 0.2 + 1, (len(bids), elapsed)
    assert len(bids) < 30  # far from the 60 published
    for client in (plain, slow_a, slow_b):
        await assert_idle(client)


@pytest.mark.django_db(transaction=True)
async def test_the_held_quote_is_the_latest_and_comes_after_the_interval(connect: Any) -> None:
    client = await connect()
    await subscribe(client, "EURUSD", max_rate=2)  # 500 ms
    loop = asyncio.get_running_loop()
    published = loop.time()
    await apublish_quote("EURUSD", 1, 2, ts=TS)
    assert await client.recv() == quote("EURUSD", 1)  # leading: at once
    await apublish_quote("EURUSD", 2, 3, ts=TS + 1)
    await apublish_quote("EURUSD", 3, 4, ts=TS + 2)
    assert await client.recv() == quote("EURUSD", 3, TS + 2)  # the latest, trailing
    assert loop.time() - published >= 0.5 - 0.01
    await assert_idle(client)  # the one it replaced never comes


@pytest.mark.django_db(transaction=True)
async def test_statuses_are_never_throttled_and_come_after_the_held_quote(
    connect: Any,
) -> None:
    client = await connect()
    await subscribe(client, "EURUSD", max_rate=0.1)  # one quote per 10 s
    await apublish_quote("EURUSD", 1, 2, ts=TS)
    assert await client.recv() == quote("EURUSD", 1)
    await apublish_quote("EURUSD", 2, 3, ts=TS + 1)  # held for 10 s...
    await apublish_status("EURUSD", "halted", ts=TS + 2)
    # ...but a status sends it first, then itself, both well within the 10 s.
    assert await client.recv(timeout=2) == quote("EURUSD", 2, TS + 1)
    assert await client.recv(timeout=2) == ["s", "EURUSD", "halted", TS + 2]
    await apublish_status("EURUSD", "open", ts=TS + 3)
    assert await client.recv(timeout=2) == ["s", "EURUSD", "open", TS + 3]
    await apublish_quote("EURUSD", 3, 4, ts=TS + 4)  # throttled again: held
    await assert_idle(client)


@pytest.mark.django_db(transaction=True)
async def test_a_throttled_subscribe_gets_the_snapshot_at_once(connect: Any) -> None:
    await apublish_quote("EURUSD", 1, 2, ts=TS)
    await apublish_status("EURUSD", "close_only", ts=TS + 1)
    client = await connect()
    await subscribe(client, "EURUSD", max_rate=0.1)
    assert await client.recv() == quote("EURUSD", 1)
    assert await client.recv() == ["s", "EURUSD", "close_only", TS + 1]


@pytest.mark.django_db(transaction=True)
async def test_resubscribing_moves_a_symbol_between_rates(connect: Any) -> None:
    client = await connect()
    hub = await get_hub()
    await subscribe(client, "EURUSD", "GBPUSD", max_rate=0.1)
    assert set(hub.quotes.groups[ch("EURUSD")]) == {10_000}
    await apublish_quote("EURUSD", 1, 2, ts=TS)
    assert await client.recv() == quote("EURUSD", 1)
    await apublish_quote("EURUSD", 2, 3, ts=TS + 1)  # held by the 10 s group

    # No max_rate: every quote from now on; the held one comes at once, after the reply.
    assert await subscribe(client, "EURUSD") == ["EURUSD"]
    assert await client.recv() == quote("EURUSD", 2, TS + 1)
    assert ch("EURUSD") not in hub.quotes.groups  # its group went with its last session
    for i in range(3, 6):
        await apublish_quote("EURUSD", i, i + 1, ts=TS + i)
    assert [await client.recv() for _ in range(3)] == [
        quote("EURUSD", i, TS + i) for i in range(3, 6)
    ]

    # Another rate again: a group of its own.
    await subscribe(client, "EURUSD", max_rate=1)
    assert set(hub.quotes.groups[ch("EURUSD")]) == {1000}
    assert set(hub.quotes.groups[ch("GBPUSD")]) == {10_000}
    await assert_idle(client)


@pytest.mark.django_db(transaction=True)
async def test_unsubscribe_and_close_drop_the_groups_and_their_timers(connect: Any) -> None:
    client, other = await connect(), await connect()
    hub = await get_hub()
    await subscribe(client, "EURUSD", max_rate=0.1)
    await subscribe(other, "GBPUSD", max_rate=0.1)
    await apublish_quote("EURUSD", 1, 2, ts=TS)
    await apublish_quote("EURUSD", 2, 3, ts=TS + 1)  # held: the group's timer runs
    await apublish_quote("GBPUSD", 1, 2, ts=TS)
    await apublish_quote("GBPUSD", 2, 3, ts=TS + 1)
    assert await client.recv() == quote("EURUSD", 1)
    assert await other.recv() == quote("GBPUSD", 1)
    eurusd = hub.quotes.groups[ch("EURUSD")][10_000]
    gbpusd = hub.quotes.groups[ch("GBPUSD")][10_000]
    # The second quotes may still be on their way from Redis: wait for them to be held.
    await until(lambda: eurusd._timer is not None and gbpusd._timer is not None)

    await client.unsubscribe("EURUSD")
    assert eurusd.closed and eurusd._timer is None
    assert ch("EURUSD") not in hub.quotes.groups
    assert all(ch("EURUSD") not in by_channel for by_channel in hub.quotes.throttled.values())
    await assert_idle(client)  # the held quote never comes

    await other.close()
    await until(lambda: not hub.quotes.groups)
    assert gbpusd.closed and gbpusd._timer is None and not hub.quotes.throttled


# --- entitlements -----------------------------------------------------------------

ASKED: list[list[str]] = []


def no_stocks_for_alice(identity: Identity, symbols: list[str]) -> list[str]:
    """Reads the database, as a host's entitlement check would."""
    from django.contrib.auth import get_user_model

    ASKED.append(list(symbols))
    username = get_user_model().objects.get(pk=identity.user_id).username
    return [s for s in symbols if not (username == "alice" and s.startswith("#"))]


async def only_fx(identity: Identity, symbols: list[str]) -> set[str]:
    return {s for s in symbols if len(s) == 6}


def database_down(identity: Identity, symbols: list[str]) -> list[str]:
    raise DatabaseError("could not connect to server at 10.1.2.3")


def buggy(identity: Identity, symbols: list[str]) -> list[str]:
    raise RuntimeError("secret internal detail")


@pytest.mark.django_db(transaction=True)
async def test_entitlements_refuse_per_user_with_invalid_symbols(connect: Any) -> None:
    """A sync callable (by dotted path) that reads the database; refused symbols join
    the malformed ones in `invalid_symbols`, in request order, and take no room."""
    ASKED.clear()
    entitlements = "tests.test_max_rate.no_stocks_for_alice"
    with override_settings(
        BROKER_WS=broker_ws_settings(SYMBOL_ENTITLEMENTS=entitlements, MAX_SUBSCRIPTIONS=1)
    ):
        client = await connect()
        await client.send({"event": "subscribe", "data": ["#AAPL", "", "EURUSD"]})
        assert await client.recv() == {"event": "subscribed", "data": ["EURUSD"]}
        error = await client.recv()
        assert error["data"]["code"] == "invalid_symbols"
        assert error["data"]["symbols"] == ["#AAPL", ""]
        assert ASKED == [["#AAPL", "EURUSD"]]  # what passed SYMBOLS, and is new
        await subscribe(client, "EURUSD", max_rate=1)  # subscribed already: not asked
        assert ASKED == [["#AAPL", "EURUSD"]]
        await apublish_quote("#AAPL", 1, 2, ts=TS)
        await assert_idle(client)


@pytest.mark.django_db(transaction=True)
async def test_an_async_entitlement_callable(connect: Any) -> None:
    with override_settings(BROKER_WS=broker_ws_settings(SYMBOL_ENTITLEMENTS=only_fx)):
        client = await connect()
        await client.send({"event": "subscribe", "data": ["EURUSD", "BTC/USD"]})
        assert await client.recv() == {"event": "subscribed", "data": ["EURUSD"]}
        assert (await client.recv())["data"]["symbols"] == ["BTC/USD"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("policy", "code"), [(database_down, "unavailable"), (buggy, "internal_error")]
)
async def test_a_failing_entitlement_callable_is_an_error_reply(
    connect: Any, policy: Any, code: str
) -> None:
    """Nothing is subscribed, the reply never carries the exception's text, and the
    session stays open."""
    with override_settings(BROKER_WS=broker_ws_settings(SYMBOL_ENTITLEMENTS=policy)):
        client = await connect()
        await client.send({"event": "subscribe", "data": ["EURUSD"]})
        reply = await client.recv()
        assert reply["event"] == "error" and reply["data"]["code"] == code
        assert reply["data"]["symbols"] == ["EURUSD"]
        assert "10.1.2.3" not in str(reply) and "secret" not in str(reply)
        await apublish_quote("EURUSD", 1, 2, ts=TS)
        await assert_idle(client)


@pytest.mark.parametrize(
    "value", ["tests.test_max_rate.no_such_thing", "tests.test_max_rate.TS", 7]
)
def test_check_e016_symbol_entitlements(value: Any) -> None:
    with override_settings(BROKER_WS=broker_ws_settings(SYMBOL_ENTITLEMENTS=value)):
        assert [m.id for m in check_settings()] == ["broker_ws.E016"]


@pytest.mark.parametrize("value", [None, only_fx, "tests.test_max_rate.no_stocks_for_alice"])
def test_check_e016_accepts_none_a_callable_and_its_path(value: Any) -> None:
    with override_settings(BROKER_WS=broker_ws_settings(SYMBOL_ENTITLEMENTS=value)):
        assert check_settings() == []
