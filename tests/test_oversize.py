"""A client message over the server's own size limit (1 MiB), end to end.

docs/protocol.md (Close codes, Limits) promises close 1009 for a message over the
server's message size limit, 1 MiB, under daphne and under uvicorn: the client must get
a close frame with that code (and a reason), not a dropped TCP connection (1006). The
server keeps running and serves new sessions. A message of exactly 1 MiB is still
within the server's limit: broker_ws answers it with ``message_too_large`` (its own
``MAX_MESSAGE_BYTES``) and the session stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import pytest
import websockets

from tests.servers import Deployment, deployment, obtain_token

MiB = 1024 * 1024
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One migrated demo database for both servers (each test starts its own server)."""
    with deployment("embedded", tmp_path_factory.mktemp("oversize")) as dep:
        yield dep


async def authorize(ws: websockets.ClientConnection, token: str) -> None:
    await ws.send(json.dumps({"authorization": token}))
    assert json.loads(await ws.recv())["event"] == "authorized"


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_message_over_the_server_limit_gets_close_1009(demo: Deployment, server: str) -> None:
    host = demo.start_server("--no-feed", "--server", server)
    token = obtain_token(host, "alice", "alice-demo-pass")["access"]

    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(f"ws://{host}/", max_size=None, ping_interval=None) as ws:
            await authorize(ws, token)
            # At the limit: broker_ws's own, smaller limit answers; the session stays open.
            await ws.send("x" * MiB)
            reply = json.loads(await ws.recv())
            assert reply["data"]["code"] == "message_too_large", reply
            # One byte over it: the server's limit, close 1009 with a reason.
            # (The server may close while the message is still being written.)
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send("x" * (MiB + 1))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                reply = await ws.recv()
                pytest.fail(f"the session stayed open; the server answered {reply[:120]}")
        rcvd = closed.value.rcvd
        assert rcvd is not None, f"no close frame: TCP dropped ({ws.close_code})"
        assert rcvd.code == 1009, rcvd
        assert rcvd.reason, "a 1009 close frame without a reason"
        assert ws.close_code == 1009

    assert demo.servers[-1].poll() is None, "the server exited"
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(f"ws://{host}/") as ws:
            await authorize(ws, token)
            await ws.send("ping")
            assert await ws.recv() == "pong"
