"""Dependencies failing for real under a running daphne: PostgreSQL stopped, Redis
down when the server starts.

Each test runs its own PostgreSQL cluster and ``redis-server``
(tests/services.py) and stops them for real; the shared services are never
touched. What a client must see: a failing dependency is never its fault
(``unavailable`` and 4008, reconnect after a back-off; never ``auth_failed``
and 4001), no message names the database or its address, and no account frame
is lost.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import websockets

from tests.servers import obtain_token
from tests.services import PrivatePostgres, PrivateRedis, private_deployment
from tests.test_e2e import SAVE_BALANCE
from tests.test_faults import Stream, run_manage

TIMEOUT = 10.0
#: What a driver's message would leak: an address, a port, the driver's words.
LEAK = re.compile(
    r"127\.0\.0\.1|localhost|port \d+|connection (to|failed|refused)|psycopg|server at",
    re.IGNORECASE,
)


async def open_stream(host: str) -> Stream:
    return Stream(await websockets.connect(f"ws://{host}/", max_queue=None))


async def close_code(stream: Stream, timeout: float = TIMEOUT) -> int | None:
    """Read until the server closes; the close code the client saw."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await stream.recv(timeout)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


def server_log(dep: Any) -> str:
    logs = dep.stop()
    dep.servers.clear()
    return "\n".join(logs)


async def test_database_down_is_unavailable_4008_without_driver_text_and_recovers() -> None:
    """PostgreSQL is stopped under a running server: a valid token is answered
    ``unavailable`` and 4008 with a message that names no host, port or driver, an
    authorized session stays open, and once PostgreSQL is back the same token
    authorizes and a save reaches both sessions."""
    with PrivatePostgres() as postgres, private_deployment(None, postgres) as dep:
        host = dep.start_server("--no-feed")
        tokens = obtain_token(host, "alice", "alice-demo-pass")
        token = tokens["access"]
        watcher = await open_stream(host)
        await watcher.send({"authorization": token})
        seq = (await watcher.recv())["data"]["seq"]["1001"]

        postgres.stop()
        refused = await open_stream(host)
        await refused.send({"authorization": token})
        reply = await refused.recv()
        assert reply["event"] == "error", reply
        assert reply["data"]["code"] == "unavailable", reply
        assert not LEAK.search(reply["data"]["message"]), reply
        assert await close_code(refused) == 4008
        for status, headers, body in await asyncio.gather(
            asyncio.to_thread(_http, host, "/api/token/", LOGIN),
            asyncio.to_thread(_http, host, "/api/snapshot/", None, token),
            asyncio.to_thread(_http, host, "/api/token/refresh/", {"refresh": tokens["refresh"]}),
        ):  # no 500 with a traceback: 503, retry later, no driver text
            assert status == 503, (status, body)
            assert headers.get("Retry-After") == "1", headers
            assert json.loads(body) == {"detail": "the database is unavailable; retry later"}
        await watcher.send("ping")
        assert await watcher.next_frame(lambda f: f == "pong") == "pong"

        postgres.start()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the server's connections reconnect on their next query
            again = await open_stream(host)
            await again.send({"authorization": token})
            reply = await again.recv()
            if reply["event"] == "authorized":
                break
            assert reply["data"]["code"] == "unavailable", reply
            assert time.monotonic() < deadline, "no authorization after PostgreSQL returned"
            await asyncio.sleep(0.5)
        done = await asyncio.to_thread(
            run_manage, dep, "shell", "-c", SAVE_BALANCE.format(login="1001", amount="77.50")
        )
        assert done.returncode == 0, done.stderr
        for stream in (watcher, again):
            frame = await stream.next_frame(lambda f: isinstance(f, list) and f[0] == "b")
            assert frame[:5] == ["b", "1001", seq + 1, "USD", 77.5], frame
        await watcher.ws.close()
        await again.ws.close()
        log = server_log(dep)
    assert "Traceback" not in log, log


LOGIN = {"username": "alice", "password": "alice-demo-pass"}


def _http(
    host: str, path: str, body: dict[str, Any] | None, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request; its status, headers and body (error statuses included)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{host}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_redis_down_at_start_up_still_authorizes_and_streams_account_frames() -> None:
    """The server starts while its Redis is down: sessions authorize at once and get
    account frames through the outbox; when Redis starts, quotes flow without a
    restart; the outage is one log line, not a traceback per session."""
    with (
        PrivatePostgres() as postgres,
        PrivateRedis() as redis,
        private_deployment(redis, postgres) as dep,
    ):
        redis.stop()
        host = dep.start_server("--no-feed")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        streams = []
        for _ in range(5):
            stream = await open_stream(host)
            started = time.monotonic()
            await stream.send({"authorization": token})
            reply = await stream.recv()
            assert reply["event"] == "authorized", reply
            assert time.monotonic() - started < 2.0
            streams.append(stream)
        seq = reply["data"]["seq"]["1001"]
        await streams[0].send({"event": "subscribe", "data": ["EUR/USD"]})
        assert (await streams[0].recv())["event"] == "subscribed"

        done = await asyncio.to_thread(
            run_manage, dep, "shell", "-c", SAVE_BALANCE.format(login="1001", amount="12.25")
        )
        assert done.returncode == 0, done.stderr
        for stream in streams:
            frame = await stream.next_frame(lambda f: isinstance(f, list) and f[0] == "b")
            assert frame[:3] == ["b", "1001", seq + 1], frame

        redis.start()
        deadline = time.monotonic() + 15.0
        bid = 1.0
        while True:
            assert time.monotonic() < deadline, "no quote after Redis started"
            bid += 1
            await asyncio.to_thread(
                run_manage, dep, "ws_publish_quote", "EUR/USD", str(bid), str(bid + 1)
            )
            try:
                await streams[0].next_frame(
                    lambda f, b=bid: isinstance(f, list) and f[:3] == ["t", "EUR/USD", b],
                    timeout=1.0,
                )
                break
            except TimeoutError:
                continue
        for stream in streams:
            await stream.ws.close()
        log = server_log(dep)
    assert "Traceback" not in log, log
    assert log.count("Redis unreachable") == 1, log
