"""A session's outgoing queue: it delivers or it closes, and its own tasks survive
the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY

import broker_ws
from broker_ws.servers import FastPath, Transport
from broker_ws.session.consumer import StreamConsumer
from broker_ws.session.hub import get_hub
from broker_ws.session.outgoing import Outgoing
from tests.conftest import TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)


async def until(condition: Any, timeout: float = TIMEOUT) -> None:
    """Wait for ``condition()`` to hold, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_write_that_fails_with_the_client_still_there_closes_the_session(
    make_user: Any,
) -> None:
    """The server's send raising (not because the client left) must not leave a
    session open, registered and silent: it is closed with 4008 and leaves the hub."""
    user = await make_user("writefail", ["7101"])
    failing = asyncio.Event()
    consumer = StreamConsumer.as_asgi()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def flaky_send(message: dict[str, Any]) -> None:
            if failing.is_set() and message["type"] == "websocket.send":
                failing.clear()  # once: the close that follows must go through
                raise RuntimeError("the server could not write this frame")
            await send(message)

        await consumer(scope, receive, flaky_send)

    ws = WebsocketCommunicator(app, "/")
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    await ws.send_json_to({"authorization": user.token})
    assert (await ws.receive_json_from(TIMEOUT))["event"] == "authorized"
    hub = await get_hub()
    assert hub.sessions_of("7101") == 1

    failing.set()
    await broker_ws.anotify("this write fails", login="7101")
    closed = await ws.receive_output(TIMEOUT)
    assert closed == {"type": "websocket.close", "code": int(broker_ws.CloseCode.UNAVAILABLE)}
    await until(lambda: hub.sessions_of("7101") == 0)
    await ws.disconnect()


class HeldBuffer(Transport):
    """A transport whose server holds as many bytes as the test says."""

    buffer_limit = 100

    def __init__(self) -> None:
        self.held = 0

    def buffered(self) -> int:
        return self.held


async def test_the_flush_after_a_drain_survives_a_garbage_collection() -> None:
    """The task that writes a slow session's queue once its socket drained is
    referenced by the queue: a collection while it waits on the server does not
    destroy it (and the frame it was writing)."""
    transport = HeldBuffer()
    waiting: weakref.WeakSet[asyncio.Future[None]] = weakref.WeakSet()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        # Waits on a future that only the writing task refers to, as a server's
        # send waiting on its socket does.
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.add(written)
        await written
        sent.append(message["text"])

    async def too_slow() -> None:
        raise AssertionError("the session is not too slow")

    out = Outgoing(send, transport, too_slow)
    transport.held = 1000
    await out.push("after the drain")
    assert out.slow and sent == []

    transport.held = 0
    await until(lambda: len(waiting) == 1)
    gc.collect()
    assert len(waiting) == 1, "the flush task was garbage-collected mid-write"
    for written in list(waiting):
        written.set_result(None)
    await until(lambda: sent == ["after the drain"])
    assert not out.slow


async def test_a_fast_path_that_fails_warns_and_counts_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = FastPath("someserver", "test shortcut")

    def count() -> float:
        labels = {"server": "someserver", "path": "test shortcut"}
        value = REGISTRY.get_sample_value("broker_ws_fast_path_disabled_total", labels)
        return value or 0.0

    before = count()
    with caplog.at_level(logging.WARNING, logger="broker_ws.servers.base"):
        path.fail(AttributeError("'Protocol' object has no attribute 'renamed'"))
        path.fail(AttributeError("again"))
    assert not path.enabled
    warnings = [r for r in caplog.records if "test shortcut" in r.getMessage()]
    assert len(warnings) == 1
    assert "renamed" in warnings[0].getMessage()
    assert count() == before + 1
