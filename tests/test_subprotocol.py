"""The versioned handshake, under daphne and uvicorn: ``broker-ws.v1`` offered is
echoed, none offered is served as before, only others offered is refused at the
handshake with HTTP 400 and a reason naming the subprotocol this server speaks."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.servers import Deployment, deployment, obtain_token

TIMEOUT = 15.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment("embedded", Path(tmp_path_factory.mktemp("subprotocol"))) as dep:
        yield dep


def raw_upgrade(host: str, protocols: str) -> bytes:
    """The server's answer to an upgrade offering ``protocols`` (its first bytes)."""
    address, port = host.split(":")
    with socket.create_connection((address, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(
            (
                "GET / HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.settimeout(0.5)
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except TimeoutError:
            pass
        return answer


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_subprotocol_negotiation(demo: Deployment, server: str) -> None:
    host = demo.start_server("--no-feed", "--server", server)
    token = obtain_token(host, "alice", "alice-demo-pass")["access"]
    async with asyncio.timeout(TIMEOUT):
        for offered, chosen in (
            (["broker-ws.v1"], "broker-ws.v1"),
            (["broker-ws.v2", "broker-ws.v1"], "broker-ws.v1"),
            (None, None),
        ):
            async with websockets.connect(f"ws://{host}/", subprotocols=offered) as ws:
                assert ws.subprotocol == chosen
                await ws.send(json.dumps({"authorization": token}))
                reply = json.loads(await ws.recv())
                assert reply["event"] == "authorized" and reply["data"]["protocol"] == "1.1"

    answer = await asyncio.to_thread(raw_upgrade, host, "mqtt, broker-ws.v2")
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), answer
    assert b"broker-ws.v1" in answer, answer  # the reason names what it speaks
    # The server is still serving.
    async with websockets.connect(f"ws://{host}/", subprotocols=["broker-ws.v1"]) as ws:
        await ws.send(json.dumps({"authorization": token}))
        assert json.loads(await ws.recv())["event"] == "authorized"
