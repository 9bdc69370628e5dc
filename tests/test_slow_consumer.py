"""The slow-consumer policy under daphne, with a real client that stops reading:
server memory stays flat, other sessions are not delayed, quotes are conflated,
and account frames are never dropped silently (the session is closed with 4005)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.servers import ROOT, Deployment, deployment, obtain_token
from tests.test_e2e import next_frame

# Long symbols make each quote frame about 250 bytes: at 2000 quotes/s an
# unread socket would hold 0.5 MB more every second without the policy.
SYMBOLS = [f"S{i}" + "x" * 190 for i in range(6)]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class StalledClient:
    """A raw WebSocket client with a tiny receive buffer that stops reading."""

    def __init__(self, host: str) -> None:
        name, port = host.split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((name, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, message: object) -> None:
        data = json.dumps(message).encode()
        mask = os.urandom(4)
        size = len(data)
        header = bytes([0x81]) + (
            bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        )
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def read_until_closed(self, timeout: float = 30.0) -> tuple[list[bytes], int | None]:
        """Read everything the server kept; return the text frames and the close code.

        The close code is None when the server gave up on the close handshake
        (the close frame was stuck behind unread data) and reset the connection.
        """
        self.sock.settimeout(timeout)
        stream = bytearray()
        try:
            while chunk := self.sock.recv(65536):
                stream += chunk
        except ConnectionResetError:
            pass
        texts, code, i = [], None, 0
        while i + 2 <= len(stream):
            opcode, size, i = stream[i] & 0x0F, stream[i + 1] & 0x7F, i + 2
            if size == 126:
                size, i = int.from_bytes(stream[i : i + 2], "big"), i + 2
            elif size == 127:
                size, i = int.from_bytes(stream[i : i + 8], "big"), i + 8
            payload, i = bytes(stream[i : i + size]), i + size
            if opcode == 0x1:
                texts.append(payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big")
        return texts, code


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Deployment]:
    with deployment("embedded", tmp_path) as dep:
        yield dep


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_stalled_client_neither_grows_the_server_nor_delays_others(
    demo: Deployment, server: str
) -> None:
    """With quotes at 2000/s, a client that stops reading costs the server no
    growing memory, and a reading client keeps getting fresh quotes (daphne never
    blocks a send; uvicorn's send would wait for the stalled socket to drain)."""
    host = demo.start_server("--rate", "2000", "--symbols", ",".join(SYMBOLS), "--server", server)
    pid = demo.servers[-1].pid
    token = obtain_token(host, "alice", "alice-demo-pass")["access"]
    stalled = StalledClient(host)
    stalled.send({"authorization": token})
    stalled.send({"event": "subscribe", "data": SYMBOLS})
    async with websockets.connect(f"ws://{host}/", max_queue=None) as reader:
        await reader.send(json.dumps({"authorization": token}))
        await reader.send(json.dumps({"event": "subscribe", "data": SYMBOLS}))
        await next_frame(reader, lambda f: isinstance(f, list) and f[0] == "t")

        async def lag_ms(seconds: float) -> float:
            """Worst publish-to-receipt lag of the reading client over ``seconds``."""
            worst, end = 0.0, time.monotonic() + seconds
            while time.monotonic() < end:
                frame = json.loads(await asyncio.wait_for(reader.recv(), 5))
                if frame[0] == "t":
                    worst = max(worst, time.time() * 1000 - frame[4])
            return worst

        await lag_ms(4)  # the kernel's socket buffers fill first
        before = rss_kb(pid)
        worst = await lag_ms(8)
        growth_kb = rss_kb(pid) - before
    stalled.sock.close()
    # Without the policy the server grows by about 4 MB over these 8 s.
    assert growth_kb < 1536, f"server grew by {growth_kb} KB while a client stalled"
    assert worst < 500, f"a reading client lagged {worst:.0f} ms behind a stalled one"


NOTIFY_UNTIL_STOPPED = """
import time
from broker_ws import notify
for i in range(6000):
    notify(f"n{i}", login="1001")
    time.sleep(0.01)
"""


def slow_closes(host: str) -> float:
    """The server's count of sessions it closed with 4005, from its /metrics."""
    with urllib.request.urlopen(f"http://{host}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('broker_ws_closes_total{code="4005"}'):
                return float(line.split()[-1])
    return 0.0


async def test_stalled_client_is_closed_4005_rather_than_losing_account_frames(
    demo: Deployment,
) -> None:
    """A client that never reads, while its login gets a notification every 10 ms:
    once the kernel's buffers and SLOW_CONSUMER_BUFFER are full and more account
    frames wait than SLOW_CONSUMER_MAX_PENDING, the session is closed with 4005;
    every frame it did get was in order from the first, none skipped silently."""
    demo.env["BROKER_WS_JSON"] = json.dumps(
        {"SLOW_CONSUMER_BUFFER": 1024, "SLOW_CONSUMER_MAX_PENDING": 20}
    )
    host = demo.start_server("--rate", "2000", "--symbols", ",".join(SYMBOLS))
    token = obtain_token(host, "alice", "alice-demo-pass")["access"]
    stalled = StalledClient(host)
    stalled.send({"authorization": token})
    stalled.send({"event": "subscribe", "data": SYMBOLS})
    notifier = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", NOTIFY_UNTIL_STOPPED],
        cwd=ROOT,
        env=demo.env,
        stdout=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(90):  # the kernel holds some MB before daphne must
            while not slow_closes(host):
                assert notifier.poll() is None, "the notifier ended before the session closed"
                await asyncio.sleep(0.2)
    finally:
        notifier.kill()
        notifier.wait()
    texts, code = await asyncio.to_thread(stalled.read_until_closed)
    logs = "".join(demo.stop())
    assert "Traceback" not in logs, logs
    assert code == 4005 or (code is None and "TOO_SLOW (4005)" in logs), (code, logs[-2000:])
    got = [json.loads(t) for t in texts if t.startswith(b'["n"')]
    seqs = [frame[2] for frame in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
    assert [frame[4] for frame in got] == [f"n{i}" for i in range(len(got))]
