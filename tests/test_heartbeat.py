"""Heartbeats: ``["h", ts_ms, {login: seq}]`` to an authorized session sent nothing
for ``HEARTBEAT_INTERVAL`` seconds, carrying the last seq of each of its logins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from broker_ws.publish.api import push
from broker_ws.session.heartbeat import Heartbeats
from broker_ws.wire.encoded import EncodedFrame
from tests.conftest import broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)


def is_heartbeat(frame: Any) -> bool:
    return isinstance(frame, list) and frame[:1] == ["h"]


async def test_an_idle_session_gets_heartbeats_with_its_logins_seqs(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Idle: a heartbeat with the authorized seqs; after a frame, one with its seq."""
    alice = await make_user("alice", ["1001", "1002"])
    await database_sync_to_async(push)("1001", "o", ["first"])
    with override_settings(BROKER_WS=broker_ws_settings(HEARTBEAT_INTERVAL=0.5)):
        client = await client_factory()
        data = await client.authorize(alice.token)
        before = int(time.time() * 1000)
        beat = await client.wait_for(is_heartbeat)
        assert beat[2] == data["seq"] and set(beat[2]) == {"1001", "1002"}
        assert before - 1000 <= beat[1] <= int(time.time() * 1000)
        await database_sync_to_async(push)("1001", "o", ["second"])
        frame = await client.wait_for(lambda f: isinstance(f, list) and f[0] == "o")
        beat = await client.wait_for(is_heartbeat)
        assert beat[2]["1001"] == frame[2] == data["seq"]["1001"] + 1


async def test_no_heartbeat_before_authorization(client_factory: Any) -> None:
    with override_settings(BROKER_WS=broker_ws_settings(HEARTBEAT_INTERVAL=0.2)):
        client = await client_factory()
        await client.assert_nothing(within=1.0, matching=is_heartbeat)


class FakeSession:
    """A session as the heartbeat sees it, with frames counted like Outgoing does."""

    def __init__(self, *logins: str) -> None:
        self.closed = False
        self.heartbeat_mark = 0
        self.heartbeat_since = 0.0
        self.written = 1  # its authorized reply
        self.logins = logins
        self.sent: list[EncodedFrame] = []

    def frames_written(self) -> int:
        return self.written

    def stream_logins(self) -> tuple[str, ...]:
        return self.logins

    async def push(self, frame: Any) -> None:
        self.written += 1
        self.sent.append(frame)


async def test_only_sessions_sent_nothing_for_the_interval_are_due() -> None:
    """Written to since the last look: not due; idle for the interval: due, and again
    one interval after its heartbeat; a closed session never. Sessions of the same logins
    share one encoded frame."""
    busy, idle, twin, closed = (
        FakeSession("1"),
        FakeSession("1", "2"),
        FakeSession("1", "2"),
        FakeSession("3"),
    )
    closed.closed = True
    sessions = [busy, idle, twin, closed]
    beats = Heartbeats(lambda: sessions, lambda logins: {"1": 7, "2": 3})
    assert await beats.beat(100.0, 15.0) == 0  # first look: everything counts as new
    busy.written += 1
    assert await beats.beat(110.0, 15.0) == 0
    busy.written += 1
    assert await beats.beat(115.0, 15.0) == 2  # idle and twin, idle since 100
    assert idle.sent[0] is twin.sent[0]
    assert orjson.loads(idle.sent[0].text)[2] == {"1": 7, "2": 3}
    assert not busy.sent and not closed.sent
    assert await beats.beat(116.0, 15.0) == 0
    # busy: idle since 115; idle and twin: an interval after their heartbeat (which
    # is not activity).
    assert await beats.beat(130.0, 15.0) == 3
    assert len(idle.sent) == 2


async def test_interval_zero_turns_heartbeats_off() -> None:
    with override_settings(BROKER_WS=broker_ws_settings(HEARTBEAT_INTERVAL=0)):
        beats = Heartbeats(lambda: [], lambda logins: {})
        await asyncio.wait_for(beats.run(), timeout=1.0)  # returns at once
