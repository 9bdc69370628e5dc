"""The demo as users run it: daphne in a process of its own, a real WebSocket client,
tokens from the REST endpoint, and quotes and saves coming from other processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.servers import Deployment, deployment, obtain_token

TIMEOUT = 10.0
SAVE_BALANCE = """
from decimal import Decimal
from django.db import transaction
from project.broker.models import Balance
with transaction.atomic():
    balance = Balance.objects.select_for_update().get(account__login="{login}")
    balance.balance = Decimal("{amount}")
    balance.save()
"""


@pytest.fixture(params=["embedded", "redis"])
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """The demo deployment: SQLite without Redis, or PostgreSQL with Redis."""
    with deployment(request.param, tmp_path) as dep:
        yield dep


async def next_frame(ws: Any, wanted: Any) -> Any:
    """The first frame for which ``wanted(frame)`` is true, within TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            raw = await ws.recv()
            frame = json.loads(raw) if raw[0] in "[{" else raw
            if wanted(frame):
                return frame


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_demo_streams_quotes_and_saves_from_other_processes(
    demo: Deployment, server: str
) -> None:
    """A real client gets a token over REST, subscribes, and receives a quote and the
    balance frame caused by saves made in other processes, with seq rising by one,
    under daphne and under uvicorn."""
    host = demo.start_server("--no-feed", "--server", server)
    token = obtain_token(host, "alice", "alice-demo-pass")["access"]
    async with websockets.connect(f"ws://{host}/") as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong"
        await ws.send(json.dumps({"authorization": token}))
        authorized = json.loads(await ws.recv())
        assert authorized["event"] == "authorized"
        assert authorized["data"]["logins"] == ["1001", "1002"]
        seq = authorized["data"]["seq"]["1001"]

        await ws.send(json.dumps({"event": "subscribe", "data": ["EUR/USD"]}))
        assert json.loads(await ws.recv()) == {"event": "subscribed", "data": ["EUR/USD"]}

        await asyncio.to_thread(demo.manage, "ws_publish_quote", "EUR/USD", "1.1", "1.2")
        # Without Redis, a quote published by another process cannot reach the
        # server (documented); the server's own feed is what the demo streams.
        if "REDIS_URL" in demo.env:
            quote = await next_frame(ws, lambda f: isinstance(f, list) and f[0] == "t")
            assert quote[:4] == ["t", "EUR/USD", 1.1, 1.2]

        await asyncio.to_thread(demo.shell, SAVE_BALANCE.format(login="1001", amount="12345.67"))
        frame = await next_frame(ws, lambda f: isinstance(f, list) and f[0] == "b")
        assert frame[:5] == ["b", "1001", seq + 1, "USD", 12345.67]

        await asyncio.to_thread(demo.shell, SAVE_BALANCE.format(login="1001", amount="1.00"))
        frame = await next_frame(ws, lambda f: isinstance(f, list) and f[0] == "b")
        assert frame[:5] == ["b", "1001", seq + 2, "USD", 1.0]


async def test_demo_feed_ticks_in_the_embedded_server(tmp_path: Path) -> None:
    """``rundemo`` runs the random-walk feed inside daphne's process: quotes tick."""
    with deployment("embedded", tmp_path) as demo:
        host = demo.start_server("--rate", "20")
        token = obtain_token(host, "bob", "bob-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/") as ws:
            await ws.send(json.dumps({"authorization": token}))
            assert json.loads(await ws.recv())["event"] == "authorized"
            await ws.send(json.dumps({"event": "subscribe", "data": ["US 500"]}))
            assert json.loads(await ws.recv())["event"] == "subscribed"
            first = await next_frame(ws, lambda f: isinstance(f, list) and f[0] == "t")
            later = await next_frame(ws, lambda f: isinstance(f, list) and f[4] > first[4])
            assert first[1] == later[1] == "US 500"
            assert later[2] < later[3]  # bid below ask


async def test_revoking_from_another_process_closes_sessions_within_a_second(
    demo: Deployment,
) -> None:
    """``manage.py ws_revoke`` in its own process closes the user's sessions with 4004
    within one second of returning, with or without Redis; other users stay."""
    host = demo.start_server("--no-feed")
    alice = obtain_token(host, "alice", "alice-demo-pass")["access"]
    bob = obtain_token(host, "bob", "bob-demo-pass")["access"]
    sessions = []
    for token in (alice, alice, bob):
        ws = await websockets.connect(f"ws://{host}/")
        await ws.send(json.dumps({"authorization": token}))
        assert json.loads(await ws.recv())["event"] == "authorized"
        sessions.append(ws)
    await asyncio.to_thread(demo.manage, "ws_revoke", "alice")
    async with asyncio.timeout(1.0):
        for ws in sessions[:2]:
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 4004
    await sessions[2].send("ping")
    assert await sessions[2].recv() == "pong"
    await sessions[2].close()


async def test_broadcast_from_another_process_arrives_once(demo: Deployment) -> None:
    """``manage.py ws_notify TEXT`` (no login) in its own process reaches every
    session exactly once, with or without Redis (bus and outbox poll both bring it)."""
    host = demo.start_server("--no-feed")
    sessions = []
    for user, password in (("alice", "alice-demo-pass"), ("bob", "bob-demo-pass")):
        token = obtain_token(host, user, password)["access"]
        ws = await websockets.connect(f"ws://{host}/")
        await ws.send(json.dumps({"authorization": token}))
        assert json.loads(await ws.recv())["event"] == "authorized"
        sessions.append(ws)
    await asyncio.to_thread(demo.manage, "ws_notify", "maintenance at 22:00", "--level", "warning")
    await asyncio.to_thread(demo.manage, "ws_notify", "marker")
    for ws in sessions:
        first = await next_frame(ws, lambda f: isinstance(f, list))
        second = await next_frame(ws, lambda f: isinstance(f, list))
        assert first[:5] == ["n", None, None, "warning", "maintenance at 22:00"]
        assert second[:5] == ["n", None, None, "info", "marker"]  # no duplicate between
        await ws.close()
