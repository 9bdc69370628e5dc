"""Several daphne processes on one Redis and one database, and a connect storm:
quotes and saves from other processes reach every session on every server,
exactly once, and 2000 clients connecting at once are all served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.servers import Deployment, deployment, obtain_token
from tests.test_e2e import SAVE_BALANCE, next_frame

STORM = 2000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Deployment]:
    """PostgreSQL and Redis shared by every process started from it."""
    with deployment("redis", tmp_path) as dep:
        yield dep


async def authorized(host: str, token: str, symbols: list[str]) -> Any:
    ws = await websockets.connect(f"ws://{host}/", open_timeout=30, max_queue=None)
    await ws.send(json.dumps({"authorization": token}))
    reply = json.loads(await ws.recv())
    assert reply["event"] == "authorized", reply
    await ws.send(json.dumps({"event": "subscribe", "data": symbols}))
    assert json.loads(await ws.recv())["event"] == "subscribed"
    return ws


def is_marker(frame: Any) -> bool:
    return isinstance(frame, list) and frame[0] == "n" and frame[4] == "marker"


async def test_two_servers_deliver_other_processes_quotes_and_saves_exactly_once(
    cluster: Deployment,
) -> None:
    """A quote from a third process and a balance saved in a fourth reach the
    sessions of both daphne processes, once each."""
    hosts = [cluster.start_server("--no-feed"), cluster.start_server("--no-feed")]
    token = obtain_token(hosts[0], "alice", "alice-demo-pass")["access"]
    sessions = [await authorized(host, token, ["#AAPL"]) for host in hosts for _ in range(2)]
    try:
        await asyncio.to_thread(cluster.manage, "ws_publish_quote", "#AAPL", "190.1", "190.2")
        for ws in sessions:
            quote = await next_frame(ws, lambda f: isinstance(f, list) and f[0] == "t")
            assert quote[:4] == ["t", "#AAPL", 190.1, 190.2]

        await asyncio.to_thread(cluster.shell, SAVE_BALANCE.format(login="1002", amount="77.70"))
        await asyncio.to_thread(cluster.manage, "ws_notify", "marker", "--login", "1002")
        for ws in sessions:
            frame = await next_frame(ws, lambda f: isinstance(f, list) and f[0] in "bn")
            assert frame[:5] == ["b", "1002", frame[2], "USD", 77.7]
            following = await next_frame(ws, lambda f: isinstance(f, list) and f[0] in "bn")
            assert is_marker(following) and following[2] == frame[2] + 1  # no duplicate
    finally:
        for ws in sessions:
            await ws.close()


async def test_concurrent_saves_from_two_processes_number_frames_without_gaps(
    cluster: Deployment,
) -> None:
    """Two processes saving the same login at once: the session sees seq rise by one."""
    host = cluster.start_server("--no-feed")
    token = obtain_token(host, "bob", "bob-demo-pass")["access"]
    ws = await authorized(host, token, ["EURUSD"])
    start = None
    saves = 15
    script = (
        "from decimal import Decimal\nfrom django.db import transaction\n"
        "from project.broker.models import Balance\n"
        f"for i in range({saves}):\n"
        "    with transaction.atomic():\n"
        "        b = Balance.objects.get(account__login='2001')\n"
        "        b.equity = Decimal(i)\n"
        "        b.save()\n"
    )
    try:
        await asyncio.gather(
            asyncio.to_thread(cluster.shell, script), asyncio.to_thread(cluster.shell, script)
        )
        seqs = []
        for _ in range(2 * saves):
            frame = await next_frame(ws, lambda f: isinstance(f, list) and f[0] == "b")
            seqs.append(frame[2])
        start = seqs[0]
        assert seqs == list(range(start, start + 2 * saves))
    finally:
        await ws.close()


async def test_connect_storm_of_2000_clients_on_one_server(cluster: Deployment) -> None:
    """2000 clients connecting at once all authenticate, subscribe and get a quote;
    none is closed and the server logs no exception."""
    # Three demo users carry the 2000 sessions: lift the per-login session limit.
    cluster.env["BROKER_WS_JSON"] = json.dumps({"MAX_SESSIONS_PER_LOGIN": STORM})
    host = cluster.start_server("--no-feed")
    tokens = [
        obtain_token(host, u, p)["access"]
        for u, p in (("alice", "alice-demo-pass"), ("bob", "bob-demo-pass"), ("admin", "admin"))
    ]
    gate = asyncio.Semaphore(500)

    async def connect(i: int) -> Any:
        async with gate:
            return await authorized(host, tokens[i % 3], ["XAUUSD"])

    clients = await asyncio.gather(*(connect(i) for i in range(STORM)))
    try:
        await asyncio.to_thread(cluster.manage, "ws_publish_quote", "XAUUSD", "2400", "2401")
        quotes = await asyncio.gather(
            *(next_frame(ws, lambda f: isinstance(f, list) and f[0] == "t") for ws in clients)
        )
        assert all(q[:4] == ["t", "XAUUSD", 2400, 2401] for q in quotes)
        assert all(ws.close_code is None for ws in clients)
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))
    logs = cluster.stop()
    assert not any("Traceback" in log or "Exception" in log for log in logs), logs
