"""Presence: sessions per login on every server process, in-process and in Redis, with
processes that die without a goodbye dropping out; and in /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets
from channels.db import database_sync_to_async
from django.test import override_settings

from broker_ws import apresence, presence
from broker_ws.checks import check_settings
from broker_ws.exceptions import Unavailable
from broker_ws.session.hub import get_hub
from tests.conftest import REDIS_URL, broker_ws_settings, delete_prefix, redis_settings
from tests.servers import deployment, obtain_token
from tests.test_metrics import scrape

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5.0


async def wait_for_presence(expected: dict[str, int], timeout: float = TIMEOUT) -> None:
    """Return once :func:`apresence` is ``expected``; fail with what it was otherwise."""
    seen = None
    try:
        async with asyncio.timeout(timeout):
            while (seen := await apresence()) != expected:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"presence is {seen}, not {expected}") from None


async def test_presence_counts_authorized_sessions_per_login(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Each login counts its authorized sessions, a session once per login; a closed
    session leaves the count, an unauthorized one never enters it."""
    alice = await make_user("alice", ["1001", "1002"])
    bob = await make_user("bob", ["2001"])
    alices = []
    for _ in range(2):
        client = await client_factory()
        await client.authorize(alice.token)
        alices.append(client)
    bobs = await client_factory()
    await bobs.authorize(bob.token)
    await client_factory()  # never authorizes
    await wait_for_presence({"1001": 2, "1002": 2, "2001": 1})
    assert await database_sync_to_async(presence)() == {"1001": 2, "1002": 2, "2001": 1}
    await alices[0].close()
    await bobs.close()
    await wait_for_presence({"1001": 1, "1002": 1})
    await alices[1].close()
    await wait_for_presence({})


async def test_presence_record_is_deleted_when_the_hub_closes(
    make_user: Any, client_factory: Any
) -> None:
    """A hub that closes takes its record off Redis at once."""
    config = redis_settings()
    try:
        with override_settings(BROKER_WS=config):
            alice = await make_user("alice", ["1001"])
            client = await client_factory()
            await client.authorize(alice.token)
            await wait_for_presence({"1001": 1})
            hub = await get_hub()
            await hub.close()
            assert await apresence() == {}
            await client.close()
    finally:
        delete_prefix(config["KEY_PREFIX"])


async def test_presence_record_lost_from_redis_is_written_whole_at_the_next_refresh(
    make_user: Any, client_factory: Any
) -> None:
    """A record that vanished (expired during a stall, or a Redis restart) comes back
    whole, not just the logins that changed since."""
    config = redis_settings(PRESENCE_INTERVAL=0.2)
    try:
        with override_settings(BROKER_WS=config):
            alice = await make_user("alice", ["1001", "1002"])
            client = await client_factory()
            await client.authorize(alice.token)
            await wait_for_presence({"1001": 1, "1002": 1})
            hub = await get_hub()
            plain = redis.Redis.from_url(REDIS_URL)
            plain.delete(f"{config['KEY_PREFIX']}:presence:{hub.presence.process}")
            plain.close()
            await wait_for_presence({"1001": 1, "1002": 1}, timeout=2.0)
    finally:
        delete_prefix(config["KEY_PREFIX"])


def test_presence_raises_unavailable_when_redis_cannot_be_read() -> None:
    """With Redis unreachable, presence() raises broker_ws's Unavailable (never a
    partial answer), and /metrics leaves presence out but still answers."""
    with override_settings(
        BROKER_WS=broker_ws_settings(REDIS_URL="redis://127.0.0.1:1/0", KEY_PREFIX="down")
    ):
        with pytest.raises(Unavailable):
            presence()
        metrics = scrape()
        assert "broker_ws_sessions{}" in metrics
        assert not any(name.startswith("broker_ws_presence") for name in metrics)


async def test_presence_in_metrics_totals_and_top_logins(
    make_user: Any, client_factory: Any
) -> None:
    """/metrics has the totals, and one series for each of the logins with the most
    sessions when PRESENCE_METRICS_LOGINS asks for them."""
    with override_settings(BROKER_WS=broker_ws_settings(PRESENCE_METRICS_LOGINS=1)):
        alice = await make_user("alice", ["1001", "1002"])
        bob = await make_user("bob", ["2001"])
        for token in (alice.token, bob.token, bob.token):
            client = await client_factory()
            await client.authorize(token)
        await wait_for_presence({"1001": 1, "1002": 1, "2001": 2})
        metrics = await database_sync_to_async(scrape)()
    assert metrics["broker_ws_presence_logins{}"] == 3
    assert metrics["broker_ws_presence_sessions{}"] == 4
    assert metrics["broker_ws_presence_processes{}"] == 1
    top = {k: v for k, v in metrics.items() if k.startswith("broker_ws_presence_login_sessions")}
    assert top == {"broker_ws_presence_login_sessions{login=2001}": 2}


def test_presence_settings_are_checked() -> None:
    """A PRESENCE_INTERVAL that is not positive, or a negative PRESENCE_METRICS_LOGINS,
    is broker_ws.E005."""
    for bad in ({"PRESENCE_INTERVAL": 0}, {"PRESENCE_METRICS_LOGINS": -1}):
        with override_settings(BROKER_WS=broker_ws_settings(**bad)):
            assert [m.id for m in check_settings()] == ["broker_ws.E005"], bad


async def open_session(host: str, token: str) -> Any:
    ws = await websockets.connect(f"ws://{host}/", open_timeout=10)
    await ws.send(json.dumps({"authorization": token}))
    assert json.loads(await ws.recv())["event"] == "authorized"
    return ws


async def test_presence_sums_server_processes_and_forgets_one_killed_with_sigkill(
    tmp_path: Path,
) -> None:
    """Two daphne processes on one Redis: presence sums their sessions; after one is
    killed with -9 (no goodbye), its sessions drop out once its record expires."""
    prefix = f"p{uuid.uuid4().hex[:10]}"
    interval = 0.2
    try:
        with deployment("embedded", tmp_path) as dep:
            dep.env["REDIS_URL"] = REDIS_URL
            dep.env["BROKER_WS_JSON"] = json.dumps(
                {"KEY_PREFIX": prefix, "PRESENCE_INTERVAL": interval}
            )
            hosts = await asyncio.gather(
                asyncio.to_thread(dep.start_server, "--no-feed"),
                asyncio.to_thread(dep.start_server, "--no-feed"),
            )
            token = obtain_token(hosts[0], "alice", "alice-demo-pass")["access"]
            sessions = [await open_session(host, token) for host in hosts]
            sessions.append(await open_session(hosts[1], token))
            with override_settings(BROKER_WS=redis_settings(prefix, PRESENCE_INTERVAL=interval)):
                await wait_for_presence({"1001": 3, "1002": 3})
                # Started side by side: find the process that serves hosts[0].
                port = hosts[0].rsplit(":", 1)[1]
                victim = next(p for p in dep.servers if port in p.args)
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                # The record expires after 3 intervals (0.6 s); allow for a loaded machine.
                await wait_for_presence({"1001": 2, "1002": 2}, timeout=3.0)
            for ws in sessions:
                await ws.close()
    finally:
        delete_prefix(prefix)


async def test_presence_changes_that_change_no_count_do_not_hold_off_the_refresh() -> None:
    """A stream of changes that leave every count as it was (sessions that never
    authorize) still refreshes the record once per interval, so it never expires."""
    from broker_ws.backends.memory import MemoryBackend
    from broker_ws.session.presence import PresenceReporter

    backend = MemoryBackend()
    with override_settings(BROKER_WS=broker_ws_settings(PRESENCE_INTERVAL=0.1)):
        reporter = PresenceReporter(backend, lambda: {"1001": 1})
        await reporter.report(refresh=False)
        first = backend._presence[reporter.process][0]
        await asyncio.sleep(0.12)
        await reporter.report(refresh=False)  # nothing changed, but an interval has passed
        assert backend._presence[reporter.process][0] > first
        assert backend.read_presence() == {reporter.process: {"1001": 1}}
