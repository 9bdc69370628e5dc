"""The hub's parts, each alone: the quote fan-out, the per-login streams and the
outbox follower, with plain session objects and the in-process bus."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Coroutine
from typing import Any

import pytest
from django.test import override_settings

from broker_ws.backends.memory import MemoryBackend
from broker_ws.exceptions import TooManySessions
from broker_ws.session.logins import LoginStreams
from broker_ws.session.outbox_follower import OutboxFollower
from broker_ws.session.quotes import QuoteFanout
from broker_ws.wire import channel_names
from broker_ws.wire.encoded import EncodedFrame
from broker_ws.wire.messages import (
    AccountFrame,
    Broadcast,
    Message,
    Revoked,
    decode_numbered,
    decode_revocation,
    encode_numbered,
    encode_revocation,
)
from tests.conftest import broker_ws_settings


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

    async def push_account(self, login: str, seq: int, frame: Any) -> None:
        self.sent.append((login, seq, frame))

    async def revoke(self, revoked_at: float) -> None:
        self.sent.append(("revoke", revoked_at))


class Tasks:
    """A spawn function that keeps its tasks, as the hub's does."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def __call__(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task


def test_bus_payloads_round_trip() -> None:
    assert decode_numbered(encode_numbered(7, '["o","1","x y"]')) == (7, '["o","1","x y"]')
    assert decode_revocation(encode_revocation("user 1", 1.5)) == Revoked("user 1", 1.5)


async def test_quote_fanout_snapshots_encodes_once_and_releases() -> None:
    backend = MemoryBackend()
    backend.publish_quote(channel_names.quote_channel("EURUSD"), "EURUSD", '["t","EURUSD",1,2,3]')
    subscriber = backend.connect(lambda channel, payload: None)
    await subscriber.start()
    released: list[list[str]] = []
    fanout = QuoteFanout(subscriber, Tasks(), released.append)
    first, second = Recorder(), Recorder()
    assert await fanout.add(first, ["EURUSD"]) == ['["t","EURUSD",1,2,3]']
    assert await fanout.add(second, ["EURUSD"]) == ['["t","EURUSD",1,2,3]']

    channel = channel_names.quote_channel("EURUSD")
    assert await fanout.deliver(channel, '["t","EURUSD",1,2,4]')
    assert not await fanout.deliver(channel_names.quote_channel("GBPUSD"), "[]")
    assert first.sent[0] is second.sent[0]  # one EncodedFrame for both sessions
    assert first.sent[0].text == '["t","EURUSD",1,2,4]'

    fanout.remove(first, ["EURUSD"])
    assert released == []
    fanout.remove(second, ["EURUSD"])
    assert released == [[channel]]
    assert channel not in fanout.sessions and channel not in fanout.last_quote

    closed = Recorder()
    closed.closed = True
    assert await fanout.add(closed, ["EURUSD"]) == []  # closed meanwhile: not registered
    assert not fanout.sessions.get(channel)
    await subscriber.close()


async def test_login_streams_reserve_up_to_the_limit_and_deliver_in_order_once() -> None:
    backend = MemoryBackend()
    subscriber = backend.connect(lambda channel, payload: None)
    released: list[list[str]] = []
    streams = LoginStreams(subscriber, Tasks(), released.append)
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SESSIONS_PER_LOGIN=2)):
        first = streams.reserve(["1001"])
        second = streams.reserve(["1001"])
        with pytest.raises(TooManySessions):
            streams.reserve(["1001"])
    assert streams.sessions_of("1001") == 2
    (state,) = first
    state.seq = 10  # as if read from the outbox
    a, b = Recorder(), Recorder()
    assert streams.join(a, first) == {"1001": 10}
    streams.join(b, second)

    await streams.deliver(AccountFrame("1001", 11, '["o","1001",11]'))
    await streams.deliver(AccountFrame("1001", 11, '["o","1001",11]'))  # bus and poll
    assert not await streams.deliver(AccountFrame("9999", 1, "[]"))
    assert len(a.sent) == 1 and a.sent[0][:2] == ("1001", 11)
    assert a.sent[0][2] is b.sent[0][2]  # framed once for both sessions
    assert streams.seqs_of(["1001", "9999"]) == {"1001": 11}
    assert streams.needs("1001", 12) and not streams.needs("1001", 11)

    streams.remove(a, ["1001"])
    streams.remove(b, ["1001"])
    assert released == [[channel_names.login_channel("1001")]]
    assert streams.sessions_of("1001") == 0


async def test_outbox_follower_emits_typed_messages_without_fetching_what_is_not_due() -> None:
    emitted: list[list[Message]] = []
    follower = OutboxFollower(
        Tasks(),
        needs=lambda login, seq: False,  # the bus brought every frame already
        wants_user=lambda user_id: user_id == "7",
        emit=emitted.append,
    )
    revoked_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    events = [(1, "1001", 5)]
    revocations = [(1, "7", revoked_at), (2, "8", revoked_at)]
    broadcasts_ = [(3, '["n","*",0,"info","hi"]')]
    await follower._take([[events, revocations, broadcasts_]])
    assert emitted == [
        [Revoked("7", revoked_at.timestamp()), Broadcast(3, '["n","*",0,"info","hi"]')]
    ]
