"""Live account state (publish_state): no seq, never stored, conflated, capped, only
to the login's own sessions, in the REST snapshot, across processes."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from channels.db import database_sync_to_async
from django.core.checks import Error
from django.test import Client as HttpClient
from django.test import override_settings

import broker_ws
from broker_ws.checks import check_settings
from broker_ws.servers import Transport
from broker_ws.session.hub import get_hub
from tests.conftest import TIMEOUT, broker_ws_settings
from tests.servers import deployment, obtain_token
from tests.test_e2e import next_frame

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = ["equity", "margin", "free_margin", "margin_level", "floating_pl"]


def is_state(frame: Any, login: str | None = None) -> bool:
    return isinstance(frame, list) and frame[0] == "e" and (login is None or frame[1] == login)


def state_of(equity: float) -> list[float]:
    return [equity, 50.0, equity - 50.0, 100.0 * equity / 50.0, equity - 100.0]


async def until(condition: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_state_frame_reaches_the_logins_sessions_only(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """``[marker, login, null, ...fields]`` to every session of that login, and to no
    session whose token is not linked to it."""
    alice = await make_user("alice", ["1001", "1002"])
    bob = await make_user("bob", ["2001"])
    mine, also_mine, theirs = [await client_factory() for _ in range(3)]
    await mine.authorize(alice.token)
    await also_mine.authorize(alice.token)
    await theirs.authorize(bob.token)

    await broker_ws.apublish_state("1001", "e", state_of(110.5))
    expected = ["e", "1001", None, *state_of(110.5)]
    assert await mine.wait_for(is_state) == expected
    assert await also_mine.wait_for(is_state) == expected
    await theirs.assert_nothing(0.3, matching=is_state)

    await broker_ws.apublish_state("2001", "e", dict(zip(FIELDS, state_of(7), strict=True)))
    assert await theirs.wait_for(is_state) == ["e", "2001", None, *state_of(7)]
    await mine.assert_nothing(0.3, matching=is_state)


async def test_an_undeclared_marker_or_wrong_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="not declared"):
        broker_ws.publish_state("1001", "x", [1])
    with pytest.raises(ValueError, match="takes 5 fields"):
        broker_ws.publish_state("1001", "e", [1, 2])
    with pytest.raises(ValueError, match="exactly the fields"):
        await broker_ws.apublish_state("1001", "e", {"equity": 1})


def state_errors(**overrides: Any) -> list[str]:
    with override_settings(BROKER_WS=broker_ws_settings(**overrides)):
        return [
            e.msg for e in check_settings() if isinstance(e, Error) and e.id == "broker_ws.E017"
        ]


def test_the_system_check_refuses_bad_markers_fields_and_rates() -> None:
    assert state_errors() == []
    assert state_errors(STATE_MARKERS={"t": ["x"]})  # quotes
    assert state_errors(STATE_MARKERS={"h": ["x"]})  # heartbeats
    assert state_errors(STATE_MARKERS={"b": ["x"]})  # a BINDINGS marker
    assert state_errors(STATE_MARKERS={"e,": ["x"]})
    assert state_errors(STATE_MARKERS={"e": []})
    assert state_errors(STATE_MARKERS={"e": ["x", "x"]})
    assert state_errors(STATE_MARKERS=["e"])
    assert state_errors(STATE_MAX_RATE=-1)
    assert state_errors(STATE_MAX_RATE=0, STATE_MARKERS={"m2": ["a", "b"]}) == []


async def test_the_rate_cap_delivers_the_latest_state_trailing(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """At STATE_MAX_RATE=2 a burst of 20 states gives the first at once, then only the
    last, half a second later: never the ones in between, never a backlog."""
    with override_settings(BROKER_WS=broker_ws_settings(**_current(), STATE_MAX_RATE=2)):
        alice = await make_user("alice", ["1001"])
        client = await client_factory()
        await client.authorize(alice.token)
        loop = asyncio.get_running_loop()
        for equity in range(1, 21):
            await broker_ws.apublish_state("1001", "e", state_of(equity))
        first = await client.wait_for(is_state)
        first_at = loop.time()
        assert first[3] == 1
        last = await client.wait_for(is_state)
        assert last[3] == 20, last
        assert loop.time() - first_at >= 0.35  # its turn came 1 / rate after the first
        await client.assert_nothing(0.7, matching=is_state)


def _current() -> dict[str, Any]:
    """The backend fixture's settings (its REDIS_URL and KEY_PREFIX), to extend."""
    from django.conf import settings

    return {k: v for k, v in settings.BROKER_WS.items() if k in ("REDIS_URL", "KEY_PREFIX")}


class HeldBuffer(Transport):
    """A transport whose server holds as many bytes as the test says."""

    buffer_limit = 100

    def __init__(self) -> None:
        self.held = 0

    def buffered(self) -> int:
        return self.held


async def test_a_slow_session_gets_the_latest_state_not_a_backlog(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """While a session's socket is backed up its state frames are conflated per login
    and marker; once it drains it gets the latest, while a reading session of the
    same login got every one (uncapped)."""
    with override_settings(BROKER_WS=broker_ws_settings(**_current(), STATE_MAX_RATE=0)):
        alice = await make_user("alice", ["1001"])
        slow, reading = await client_factory(), await client_factory()
        await slow.authorize(alice.token)
        hub = await get_hub()
        state = hub.logins.state_of("1001")
        assert state is not None
        assert len(state.sessions) == 1
        session: Any = next(iter(state.sessions))  # the StreamConsumer
        await reading.authorize(alice.token)
        # The in-process transport never backs up: this one says its server holds
        # more than the limit, as daphne does for a client that stopped reading.
        held = HeldBuffer()
        held.held = 1000
        session.out._transport, session.out._limit = held, held.buffer_limit

        for equity in range(1, 51):
            await broker_ws.apublish_state("1001", "e", state_of(equity))
        got = [(await reading.wait_for(is_state))[3] for _ in range(50)]
        assert got == list(range(1, 51))

        def kept() -> list[Any]:
            return [orjson.loads(frame.text)[3] for frame in session.out._quotes.values()]

        await until(lambda: session.out.slow and kept() == [50])  # one kept: the latest

        held.held = 0  # the socket drained
        received = [await slow.wait_for(is_state)]
        while received[-1][3] != 50:
            received.append(await slow.wait_for(is_state))
        # The frame that found the socket backed up waits in order; the 48 after it
        # were replaced by the last one.
        assert [f[3] for f in received] in ([50], [1, 50])
        await slow.assert_nothing(0.3, matching=is_state)


async def test_state_is_never_replayed_by_a_resume(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A resume replays the numbered frames it missed, and no state frame."""
    alice = await make_user("alice", ["1001"])
    await broker_ws.apublish_state("1001", "e", state_of(1))
    await broker_ws.apush("1001", "b", ["USD", 5, 5, 0, 5, None])
    await broker_ws.apublish_state("1001", "e", state_of(2))
    client = await client_factory()
    data = await client.authorize(alice.token, resume={"1001": 0})
    seq = data["seq"]["1001"]
    replayed = [await client.wait_for(lambda f: isinstance(f, list)) for _ in range(seq)]
    assert [f[2] for f in replayed] == list(range(1, seq + 1))
    assert not any(is_state(f) for f in replayed)
    await client.assert_nothing(0.3, matching=is_state)


def get_snapshot(token: str, query: str = "") -> Any:
    return HttpClient().get(f"/api/snapshot/{query}", HTTP_AUTHORIZATION=f"Bearer {token}")


async def test_the_snapshot_returns_the_last_state_of_the_callers_logins(
    backend: str, make_user: Any
) -> None:
    alice = await make_user("alice", ["1001", "1002"])
    await make_user("bob", ["2001"])
    await broker_ws.apublish_state("1001", "e", state_of(1))
    await broker_ws.apublish_state("1001", "e", state_of(2))
    await broker_ws.apublish_state("2001", "e", state_of(3))
    response = await database_sync_to_async(get_snapshot)(alice.token)
    assert response.status_code == 200
    body = orjson.loads(response.content)
    assert body["state"] == [["e", "1001", None, *state_of(2)]]
    assert {f[1] for f in body["frames"]} == {"1001", "1002"}

    response = await database_sync_to_async(get_snapshot)(alice.token, "?login=1002")
    assert orjson.loads(response.content)["state"] == []


async def test_state_crosses_processes_over_redis(tmp_path: Path) -> None:
    """Published by another process (a shell), delivered by the daphne server to its
    session, and returned by that server's REST snapshot."""
    with deployment("redis", tmp_path) as demo:
        host = demo.start_server("--no-feed")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/") as ws:
            await ws.send(json.dumps({"authorization": token}))
            assert json.loads(await ws.recv())["event"] == "authorized"
            await asyncio.to_thread(
                demo.shell,
                "import broker_ws; broker_ws.publish_state('1001', 'e', [1, 2, 3, 4, 5]); "
                "broker_ws.publish_state('9001', 'e', [9, 9, 9, 9, 9])",
            )
            frame = await next_frame(ws, lambda f: is_state(f))
            assert frame == ["e", "1001", None, 1, 2, 3, 4, 5]

        def snapshot() -> Any:
            request = urllib.request.Request(
                f"http://{host}/api/snapshot/", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())

        body = await asyncio.to_thread(snapshot)
        assert body["state"] == [["e", "1001", None, 1, 2, 3, 4, 5]]


async def test_the_demo_feed_moves_the_equity_of_accounts_with_open_trades(
    tmp_path: Path,
) -> None:
    """The embedded demo: alice's 1001 has open EURUSD and BTCUSD trades, so its
    equity frames follow the feed's quotes (balance + floating P/L)."""
    with deployment("embedded", tmp_path) as demo:
        host = demo.start_server("--rate", "50")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/") as ws:
            await ws.send(json.dumps({"authorization": token}))
            assert json.loads(await ws.recv())["event"] == "authorized"
            first = await next_frame(ws, lambda f: is_state(f, "1001"))
            equity, margin, free_margin, level, floating = first[3:]
            assert equity == pytest.approx(10000 + floating, abs=0.011)
            assert free_margin == pytest.approx(equity - margin, abs=0.011)
            assert margin > 0 and level == pytest.approx(100 * equity / margin, rel=1e-3)
            changed = await next_frame(ws, lambda f: is_state(f, "1001") and f[7] != floating)
            assert changed[3] != equity
