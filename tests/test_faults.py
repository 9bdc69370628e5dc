"""Faults, for real: the Redis of a deployment dies and comes back.

A dedicated ``redis-server`` on a free loopback port is started for the test,
so the shared Redis on 6379 is never disturbed; it is killed (SIGKILL, no
goodbye to its clients) while a daphne server holds a live session, and
restarted on the same port. Nothing is mocked: PostgreSQL, Redis, daphne and
the processes that save and publish are all real.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import websockets

from tests.servers import POSTGRES_URL, ROOT, Deployment, free_port, obtain_token, wait_for_port
from tests.test_e2e import SAVE_BALANCE

TIMEOUT = 10.0
OUTAGE = 10.0
RECOVERY_TIMEOUT = 15.0
SYMBOL = "EUR/USD"  # no demo price alert watches it: its quotes fire no account frame


# --- processes ---------------------------------------------------------------


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A throw-away redis-server on ``port``: no persistence, loopback only."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
    except BaseException:
        kill(proc)
        raise
    return proc


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL ``proc`` (if still running) and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@contextmanager
def deployment_on(redis_url: str) -> Iterator[Deployment]:
    """tests.servers' "redis" deployment, with its own PostgreSQL database and the
    given Redis; every server is stopped and the database dropped afterwards."""
    import psycopg

    name = f"bws_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        PYTHONUNBUFFERED="1",
        DATABASE_URL=f"{POSTGRES_URL}/{name}",
        REDIS_URL=redis_url,
    )
    dep = Deployment(env)
    try:
        dep.manage("migrate", "--verbosity", "0")
        dep.manage("demo_data", "--quiet")
        yield dep
    finally:
        for log in dep.stop():  # servers a failed test left running: show what they said
            print(f"--- server stderr ---\n{log}")
        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_manage(dep: Deployment, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``manage.py *args`` in a process of its own; the result, whatever the exit code."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the client side -------------------------------------------------------------


class Stream:
    """A websockets client that records every frame it reads, in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[Any] = []

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        frame = json.loads(raw) if raw[:1] in ("[", "{") else raw
        self.seen.append(frame)
        return frame

    async def next_frame(self, wanted: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
        """The first frame for which ``wanted(frame)`` is true, within ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if wanted(frame):
                    return frame


def is_quote(bid: float) -> Callable[[Any], bool]:
    return lambda f: isinstance(f, list) and f[0] == "t" and f[1] == SYMBOL and f[2] == bid


def is_marker(frame: Any) -> bool:
    return isinstance(frame, list) and frame[0] == "n" and frame[4] == "marker-after-restart"


# --- the test ------------------------------------------------------------------------


async def test_session_survives_a_redis_restart_and_loses_no_account_frame() -> None:
    """Redis is killed for 10 s under a live session, then restarted on the same port.

    While it is down, balance saves from other processes still commit (exit 0)
    and a quote publish fails without hurting the server. Afterwards the server
    is still running, the session that stayed connected receives newly published
    quotes again within seconds, and the account frames committed during the
    outage reached it in commit order, exactly once, seq rising by one from the
    authorized seq, followed by a notification sent after the restart.
    """
    port = free_port()
    redis_proc: subprocess.Popen[bytes] | None = start_redis(port)
    server_log = ""
    try:
        with deployment_on(f"redis://127.0.0.1:{port}/0") as dep:
            host = dep.start_server("--no-feed")
            server = dep.servers[0]
            token = obtain_token(host, "alice", "alice-demo-pass")["access"]
            async with websockets.connect(f"ws://{host}/", max_queue=None) as ws:
                stream = Stream(ws)
                await stream.send({"authorization": token})
                authorized = await stream.recv()
                assert authorized["event"] == "authorized", authorized
                assert authorized["data"]["logins"] == ["1001", "1002"]
                seq0 = authorized["data"]["seq"]["1001"]
                await stream.send({"event": "subscribe", "data": [SYMBOL]})
                assert await stream.recv() == {"event": "subscribed", "data": [SYMBOL]}

                done = await asyncio.to_thread(
                    run_manage, dep, "ws_publish_quote", SYMBOL, "1", "2"
                )
                assert done.returncode == 0, done.stderr
                await stream.next_frame(is_quote(1.0))

                # --- Redis dies ---------------------------------------------------
                kill(redis_proc)
                redis_proc = None
                down_at = time.monotonic()

                amounts = []
                for i in range(4):
                    amount = f"{5000 + i}.25"
                    done = await asyncio.to_thread(
                        run_manage,
                        dep,
                        "shell",
                        "-c",
                        SAVE_BALANCE.format(login="1001", amount=amount),
                    )
                    assert done.returncode == 0, f"save {i} failed during the outage: {done.stderr}"
                    amounts.append(float(amount))
                    assert server.poll() is None, "daphne died during the outage"

                done = await asyncio.to_thread(
                    run_manage, dep, "ws_publish_quote", SYMBOL, "3", "4"
                )
                assert done.returncode != 0, "a quote was published with Redis down?"
                assert server.poll() is None, "a failed publish took the server down"

                # Keep Redis down for the whole outage; the session must stay usable.
                while time.monotonic() - down_at < OUTAGE:
                    await stream.send("ping")
                    assert await stream.next_frame(lambda f: f == "pong") == "pong"
                    await asyncio.sleep(min(1.0, max(OUTAGE - (time.monotonic() - down_at), 0)))

                # --- Redis returns, empty, on the same port -------------------------
                redis_proc = await asyncio.to_thread(start_redis, port)
                back_at = time.monotonic()
                assert server.poll() is None, "daphne died while Redis was down"

                # Publish once per second until a quote reaches the session.
                bid = 10.0
                received = None
                while received is None:
                    elapsed = time.monotonic() - back_at
                    assert elapsed < RECOVERY_TIMEOUT, (
                        f"no quote reached the session {RECOVERY_TIMEOUT} s after Redis returned"
                    )
                    bid += 1
                    done = await asyncio.to_thread(
                        run_manage, dep, "ws_publish_quote", SYMBOL, str(bid), str(bid + 1)
                    )
                    if done.returncode != 0:
                        await asyncio.sleep(1.0)
                        continue
                    try:
                        received = await stream.next_frame(
                            lambda f: isinstance(f, list) and f[0] == "t", timeout=1.0
                        )
                    except TimeoutError:
                        continue
                assert received[:4] == ["t", SYMBOL, bid, bid + 1], received

                done = await asyncio.to_thread(
                    run_manage, dep, "ws_notify", "marker-after-restart", "--login", "1001"
                )
                assert done.returncode == 0, done.stderr
                marker = await stream.next_frame(is_marker)
                assert server.poll() is None

            account = [
                f for f in stream.seen if isinstance(f, list) and f[0] in "boan" and f[1] == "1001"
            ]
            balances = [f for f in account if f[0] == "b"]
            assert [f[2] for f in balances] == [seq0 + 1 + i for i in range(len(amounts))], account
            assert [f[4] for f in balances] == amounts, balances
            assert account[-1] == marker, account
            assert marker[2] == seq0 + len(amounts) + 1, account
            assert [f[2] for f in account] == list(range(seq0 + 1, marker[2] + 1)), account
            server_log = dep.stop()[0]
            dep.servers.clear()
    finally:
        kill(redis_proc)
    assert "Traceback" not in server_log, server_log
    assert server_log, "the server's stderr was not captured"


async def connect_and_authorize(host: str, token: str) -> tuple[Stream, Any]:
    """A new session that sends its authorization; return it and the reply."""
    ws = await websockets.connect(f"ws://{host}/", max_queue=None)
    stream = Stream(ws)
    await stream.send({"authorization": token})
    return stream, await stream.recv()


async def assert_open(stream: Stream) -> None:
    await stream.send("ping")
    assert await stream.next_frame(lambda f: f == "pong") == "pong"


async def test_requests_made_while_redis_is_down_do_not_poison_the_server() -> None:
    """While Redis is down, bob (no session on this server yet, so his login channel is
    new) authorizes, and alice subscribes to a symbol nobody holds: each gets a reply
    and stays open. Once the bus is back, bob's new sessions authorize, subscribe to
    that symbol, and receive its quotes and bob's account frames as if nothing happened."""
    port = free_port()
    redis_proc: subprocess.Popen[bytes] | None = start_redis(port)
    streams: list[Stream] = []
    fresh = "NEW/SYM"
    try:
        with deployment_on(f"redis://127.0.0.1:{port}/0") as dep:
            host = dep.start_server("--no-feed")
            server = dep.servers[0]
            alice = obtain_token(host, "alice", "alice-demo-pass")["access"]
            bob = obtain_token(host, "bob", "bob-demo-pass")["access"]
            watcher, reply = await connect_and_authorize(host, alice)
            streams.append(watcher)
            assert reply["event"] == "authorized", reply
            await watcher.send({"event": "subscribe", "data": [SYMBOL]})
            assert await watcher.recv() == {"event": "subscribed", "data": [SYMBOL]}

            # --- Redis dies: requests that need a new bus subscription ---------------
            kill(redis_proc)
            redis_proc = None
            during_bob, reply = await connect_and_authorize(host, bob)
            streams.append(during_bob)
            assert reply["event"] in ("authorized", "error"), reply
            await assert_open(during_bob)
            during_alice, reply = await connect_and_authorize(host, alice)
            streams.append(during_alice)
            assert reply["event"] == "authorized", reply  # her logins are already held
            await during_alice.send({"event": "subscribe", "data": [fresh]})
            assert (await during_alice.recv())["event"] in ("subscribed", "error")
            await assert_open(during_alice)
            assert server.poll() is None

            # --- Redis returns; the bus is back once the watcher gets a quote -------------
            redis_proc = await asyncio.to_thread(start_redis, port)
            back_at = time.monotonic()
            bid = 20.0
            while True:
                assert time.monotonic() - back_at < RECOVERY_TIMEOUT, "the bus did not recover"
                bid += 1
                await asyncio.to_thread(
                    run_manage, dep, "ws_publish_quote", SYMBOL, str(bid), str(bid + 1)
                )
                try:
                    await watcher.next_frame(is_quote(bid), timeout=1.0)
                    break
                except TimeoutError:
                    continue

            # --- bob's new sessions work: authorize, subscribe, quotes, account frames ------
            after, reply = await connect_and_authorize(host, bob)
            streams.append(after)
            assert reply["event"] == "authorized", reply
            seq = reply["data"]["seq"]["2001"]
            await after.send({"event": "subscribe", "data": [fresh]})
            assert await after.recv() == {"event": "subscribed", "data": [fresh]}
            bid = 50.0
            while True:  # the symbol's first subscription ever: retry until it is live
                assert time.monotonic() - back_at < 2 * RECOVERY_TIMEOUT, "no quote of " + fresh
                bid += 1
                await asyncio.to_thread(
                    run_manage, dep, "ws_publish_quote", fresh, str(bid), str(bid + 1)
                )
                try:
                    await after.next_frame(
                        lambda f, b=bid: isinstance(f, list) and f[:3] == ["t", fresh, b],
                        timeout=1.0,
                    )
                    break
                except TimeoutError:
                    continue
            done = await asyncio.to_thread(
                run_manage, dep, "shell", "-c", SAVE_BALANCE.format(login="2001", amount="42.50")
            )
            assert done.returncode == 0, done.stderr
            frame = await after.next_frame(lambda f: isinstance(f, list) and f[0] == "b")
            assert frame[:5] == ["b", "2001", seq + 1, "USD", 42.5], frame
            again, reply = await connect_and_authorize(host, bob)
            streams.append(again)
            assert reply["event"] == "authorized", reply
            assert server.poll() is None
    finally:
        for stream in streams:
            await stream.ws.close()
        kill(redis_proc)
