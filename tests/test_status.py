"""Instrument status frames ``["s", symbol, status, ts_ms]`` (protocol v1.1).

publish_status validates its status; the frame travels on the symbol's quote
channel, in order with the quotes, never conflated by a slow session; the last
status is kept (memory and Redis) and answers a subscribe after the last quote;
and it reaches sessions of two daphne processes from a third one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.test import override_settings

import broker_ws
from broker_ws.checks import check_settings
from broker_ws.publish.api import apublish_quote, apublish_status, publish_status
from broker_ws.servers import Transport
from broker_ws.session.outgoing import Outgoing
from broker_ws.wire import frames
from broker_ws.wire.encoded import EncodedFrame
from tests.conftest import TIMEOUT, broker_ws_settings
from tests.servers import Deployment, deployment, obtain_token

TS = 1_700_000_000_000


def quote(symbol: str, bid: float, ask: float, ts: int = TS) -> list[Any]:
    return ["t", symbol, bid, ask, ts]


def status(symbol: str, value: str, ts: int = TS) -> list[Any]:
    return ["s", symbol, value, ts]


async def assert_open_and_idle(client: Any) -> None:
    """Nothing else was queued for the client: a ping is answered next."""
    await client.send("ping")
    assert await client.recv_text() == "pong"


@pytest.fixture
async def alice(make_user: Any) -> Any:
    return await make_user("alice", ["1001"])


@pytest.fixture
async def session(backend: str, client_factory: Any, alice: Any) -> Any:
    """An authorized session on the parametrized backend (memory, Redis)."""
    client = await client_factory()
    await client.authorize(alice.token)
    return client


# --- the API ------------------------------------------------------------------


def test_status_frame_layout() -> None:
    assert json.loads(frames.status("BTC/USD", "halted", TS)) == ["s", "BTC/USD", "halted", TS]
    assert frames.is_status(frames.status("X", "open", 1))
    assert not frames.is_status(frames.quote("X", 1.0, 2.0, 1))


def test_publish_status_is_exported() -> None:
    assert broker_ws.publish_status is publish_status
    assert broker_ws.apublish_status is apublish_status
    assert {"publish_status", "apublish_status"} <= set(broker_ws.__all__)


@pytest.mark.parametrize("value", ["paused", "OPEN", "", "open "])
def test_publish_status_refuses_an_unknown_status(value: str) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        broker_ws.publish_status("EURUSD", value)


def test_publish_status_refuses_a_non_string_status_and_an_empty_symbol() -> None:
    with pytest.raises(TypeError):
        broker_ws.publish_status("EURUSD", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="symbol"):
        broker_ws.publish_status("", "open")


@pytest.mark.django_db(transaction=True)
async def test_the_hosts_statuses_extend_the_builtin_ones(client_factory: Any, alice: Any) -> None:
    """A status of INSTRUMENT_STATUSES is published; the built-in ones still are."""
    with override_settings(BROKER_WS=broker_ws_settings(INSTRUMENT_STATUSES=["auction"])):
        client = await client_factory()
        await client.authorize(alice.token)
        await client.subscribe("EURUSD")
        await apublish_status("EURUSD", "auction", ts=TS)
        await apublish_status("EURUSD", "close_only", ts=TS + 1)
        assert await client.recv() == status("EURUSD", "auction")
        assert await client.recv() == status("EURUSD", "close_only", TS + 1)
    with pytest.raises(ValueError):
        await apublish_status("EURUSD", "auction")  # not declared any more


@pytest.mark.parametrize(
    "value", ["auction", ["Auction"], ["pre market"], [1], ["x" * 33], [""], None]
)
def test_check_e015_instrument_statuses(value: Any) -> None:
    with override_settings(BROKER_WS=broker_ws_settings(INSTRUMENT_STATUSES=value)):
        assert [m.id for m in check_settings()] == ["broker_ws.E015"]


def test_check_e015_accepts_short_lower_case_names() -> None:
    names = ["auction", "pre_market", "x" * 32]
    with override_settings(BROKER_WS=broker_ws_settings(INSTRUMENT_STATUSES=names)):
        assert check_settings() == []


# --- live, snapshot and order (memory and Redis) ---------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_status_reaches_the_symbols_subscribers_only(session: Any) -> None:
    await session.subscribe("EURUSD")
    await apublish_status("GBPUSD", "closed", ts=TS)  # not subscribed: never arrives
    await apublish_status("EURUSD", "halted", ts=TS)
    assert await session.recv() == status("EURUSD", "halted")
    await assert_open_and_idle(session)


@pytest.mark.django_db(transaction=True)
async def test_statuses_keep_their_order_with_the_symbols_quotes(session: Any) -> None:
    await session.subscribe("EURUSD")
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS)
    await apublish_status("EURUSD", "halted", ts=TS + 1)
    await apublish_quote("EURUSD", 1.3, 1.4, ts=TS + 2)
    await apublish_status("EURUSD", "open", ts=TS + 3)
    received = [await session.recv() for _ in range(4)]
    assert received == [
        quote("EURUSD", 1.1, 1.2),
        status("EURUSD", "halted", TS + 1),
        quote("EURUSD", 1.3, 1.4, TS + 2),
        status("EURUSD", "open", TS + 3),
    ]


@pytest.mark.django_db(transaction=True)
async def test_subscribe_answers_the_last_quote_then_the_last_status_per_symbol(
    session: Any,
) -> None:
    """After `subscribed` (and its errors): per newly subscribed symbol, in request
    order, its last quote, then its last status; a symbol with neither gets nothing."""
    await apublish_status("EURUSD", "open", ts=TS)
    await apublish_status("EURUSD", "halted", ts=TS + 1)  # the last one counts
    await apublish_quote("EURUSD", 1.1, 1.2, ts=TS + 2)
    await apublish_status("#AAPL", "closed", ts=TS + 3)  # a status and no quote
    await session.send({"event": "subscribe", "data": ["EURUSD", "", "NEVER", "#AAPL"]})
    assert await session.recv() == {"event": "subscribed", "data": ["EURUSD", "NEVER", "#AAPL"]}
    error = await session.recv()
    assert error["data"]["code"] == "invalid_symbols"
    assert await session.recv() == quote("EURUSD", 1.1, 1.2, TS + 2)
    assert await session.recv() == status("EURUSD", "halted", TS + 1)
    assert await session.recv() == status("#AAPL", "closed", TS + 3)
    await assert_open_and_idle(session)


@pytest.mark.django_db(transaction=True)
async def test_a_resubscribe_sends_no_status_again(session: Any) -> None:
    await apublish_status("EURUSD", "halted", ts=TS)
    await session.subscribe("EURUSD")
    assert await session.recv() == status("EURUSD", "halted")
    assert await session.subscribe("EURUSD") == ["EURUSD"]
    await assert_open_and_idle(session)
    await session.unsubscribe("EURUSD")
    await session.subscribe("EURUSD")  # newly subscribed again: its snapshot again
    assert await session.recv() == status("EURUSD", "halted")


@pytest.mark.django_db(transaction=True)
async def test_the_last_status_outlives_the_process_fan_out(
    backend: str, client_factory: Any, alice: Any
) -> None:
    """The last status is the bus's, not the hub's: a session subscribing after every
    local session left (the channel was released) still gets it."""
    first = await client_factory()
    await first.authorize(alice.token)
    await first.subscribe("XAUUSD")
    await apublish_status("XAUUSD", "close_only", ts=TS)
    assert await first.recv() == status("XAUUSD", "close_only")
    await first.unsubscribe("XAUUSD")
    second = await client_factory()
    await second.authorize(alice.token)
    await second.subscribe("XAUUSD")
    assert await second.recv() == status("XAUUSD", "close_only")


# --- a slow session ----------------------------------------------------------------


class HeldBuffer(Transport):
    """A transport whose server holds as many bytes as the test says."""

    buffer_limit = 100

    def __init__(self) -> None:
        self.held = 0

    def buffered(self) -> int:
        return self.held


async def test_a_slow_session_never_loses_a_status_and_keeps_its_order() -> None:
    """A slow session conflates quotes, never a status: the quote it held from before
    the status goes out before it, the later ones after it."""
    transport = HeldBuffer()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["text"])

    async def too_slow() -> None:
        raise AssertionError("the session is not too slow")

    out = Outgoing(send, transport, too_slow)
    transport.held = 1000  # the socket backs up: the session becomes slow
    for i in range(3):
        assert out.offer_quote("q:EURUSD", EncodedFrame(f'["t","EURUSD",{i},1,0]')) is None
    out.offer_quote("q:GBPUSD", EncodedFrame('["t","GBPUSD",9,1,0]'))
    await out.push_after_quote("q:EURUSD", EncodedFrame('["s","EURUSD","halted",0]'))
    for i in range(3, 6):
        out.offer_quote("q:EURUSD", EncodedFrame(f'["t","EURUSD",{i},1,0]'))
    assert out.slow and sent == []

    transport.held = 0
    async with asyncio.timeout(TIMEOUT):
        while len(sent) < 4:
            await asyncio.sleep(0.01)
    assert sent == [
        '["t","EURUSD",2,1,0]',  # the latest quote before the status
        '["s","EURUSD","halted",0]',
        '["t","GBPUSD",9,1,0]',
        '["t","EURUSD",5,1,0]',  # the latest after it
    ]


# --- across processes (PostgreSQL and Redis, real daphne processes) ----------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Deployment]:
    with deployment("redis", tmp_path) as dep:
        yield dep


async def _subscribed(host: str, token: str, symbol: str) -> tuple[Any, list[Any]]:
    """An authorized session subscribed to ``symbol``, and the frames of its snapshot
    (everything before the pong of a ping sent after the subscribe)."""
    ws = await websockets.connect(f"ws://{host}/", open_timeout=30)
    await ws.send(json.dumps({"authorization": token}))
    assert json.loads(await ws.recv())["event"] == "authorized"
    await ws.send(json.dumps({"event": "subscribe", "data": [symbol]}))
    await ws.send("ping")
    snapshot = []
    async with asyncio.timeout(TIMEOUT):
        while (raw := await ws.recv()) != "pong":
            snapshot.append(json.loads(raw))
    assert snapshot[0] == {"event": "subscribed", "data": [symbol]}
    return ws, snapshot[1:]


async def _data_frames(ws: Any, count: int) -> list[Any]:
    frames_: list[Any] = []
    async with asyncio.timeout(3 * TIMEOUT):
        while len(frames_) < count:
            frame = json.loads(await ws.recv())
            if isinstance(frame, list) and frame[0] in "ts" and frame[1] == "#AAPL":
                frames_.append(frame)
    return frames_


async def test_statuses_from_another_process_reach_both_servers_in_order(
    cluster: Deployment,
) -> None:
    """A publisher process sends a quote, a status and a quote: the sessions of two
    daphne processes get them in that order, and a session that subscribes later on
    either server gets the last quote, then the last status."""
    hosts = [cluster.start_server("--no-feed"), cluster.start_server("--no-feed")]
    token = obtain_token(hosts[0], "alice", "alice-demo-pass")["access"]
    sessions = [(await _subscribed(host, token, "#AAPL"))[0] for host in hosts]
    try:
        await asyncio.to_thread(
            cluster.shell,
            "import broker_ws\n"
            f"broker_ws.publish_quote('#AAPL', 190.1, 190.2, ts={TS})\n"
            f"broker_ws.publish_status('#AAPL', 'halted', ts={TS + 1})\n"
            f"broker_ws.publish_quote('#AAPL', 190.3, 190.4, ts={TS + 2})\n",
        )
        expected = [
            quote("#AAPL", 190.1, 190.2),
            status("#AAPL", "halted", TS + 1),
            quote("#AAPL", 190.3, 190.4, TS + 2),
        ]
        for ws in sessions:
            assert await _data_frames(ws, 3) == expected
        for host in hosts:
            late, snapshot = await _subscribed(host, token, "#AAPL")
            sessions.append(late)
            assert snapshot == [
                quote("#AAPL", 190.3, 190.4, TS + 2),
                status("#AAPL", "halted", TS + 1),
            ]
    finally:
        for ws in sessions:
            await ws.close()
