"""daphne's keepalive pings of sessions that connected together are spread
over the ping interval (broker_ws.servers.daphne.PingPhase), observed by real clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from broker_ws.servers import transport_for
from broker_ws.servers.daphne import DaphneTransport, PingPhase
from tests.servers import ROOT, deployment, free_port, wait_for_port

PING_INTERVAL = 4  # daphne checks every open session for a due ping every 2 s
SESSIONS = 32


async def first_ping_after_speaking(port: int) -> float:
    """Open a session and send one message at once, as a client's authorize is sent;
    return the seconds from that message to the server's first ping."""
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    spoke: float | None = None
    try:
        client.send_request(client.connect())
        async with asyncio.timeout(PING_INTERVAL + 8):
            while True:
                for data in client.data_to_send():
                    writer.write(data)
                data = await reader.read(65536)
                assert data, "the server closed the connection"
                client.receive_data(data)
                for event in client.events_received():
                    if isinstance(event, Response):
                        assert event.status_code == 101, event
                        # daphne restarts its ping clock at every client message.
                        client.send_text(b"ping")
                        spoke = time.monotonic()
                    elif isinstance(event, Frame) and event.opcode is Opcode.PING:
                        assert spoke is not None
                        return time.monotonic() - spoke
    finally:
        writer.close()


async def test_sessions_that_speak_together_are_not_all_pinged_together(
    tmp_path: Path,
) -> None:
    """daphne alone pings a session no sooner than PING_INTERVAL after its last
    message, so sessions that connect and authorize in the same instant are pinged
    in the same pass. With the phase, first pings fall anywhere in the interval after
    that message: some of 32 come over half a second early (each does with odds of at
    least 3 in 8 while daphne's passes are 2 s apart)."""
    with deployment("embedded", tmp_path) as dep:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                "--ping-interval", str(PING_INTERVAL), "project.asgi:application",
            ],
            cwd=ROOT,
            env=dep.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        dep.servers.append(server)
        wait_for_port(port, server)
        delays = await asyncio.gather(*(first_ping_after_speaking(port) for _ in range(SESSIONS)))
    assert all(delay <= PING_INTERVAL + 5 for delay in delays), delays  # pings still come
    assert min(delays) < PING_INTERVAL - 0.5, sorted(delays)


def test_other_servers_sends_are_left_alone() -> None:
    """Only daphne's ``send`` (a partial over its protocol) is recognised; uvicorn
    pings every session from a timer of its own, so there is nothing to spread."""

    async def send(message: dict[str, object]) -> None:
        raise AssertionError("not called")

    assert not isinstance(transport_for(send), DaphneTransport)


def test_the_clock_moves_back_once_per_restart_by_daphne() -> None:
    """Several client messages may be handled after one restart of daphne's clock
    (or one message after several): the offset is taken once per restart, never
    accumulated, and the clock is never moved forward."""
    protocol = SimpleNamespace(last_ping=1000.0)
    phase = PingPhase(protocol, 7.5)
    phase.restore()
    assert protocol.last_ping == 992.5
    phase.restore()  # a second message of the same restart
    assert protocol.last_ping == 992.5
    protocol.last_ping = 1010.0  # daphne: a new client message
    phase.restore()
    assert protocol.last_ping == 1002.5
    protocol.last_ping = time.time() + 60  # a clock set ahead is not followed
    phase.restore()
    assert protocol.last_ping <= time.time() - 7.5
