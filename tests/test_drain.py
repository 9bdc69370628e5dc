"""SIGTERM drains a real server process instead of dropping its sessions.

The demo runs under daphne and under uvicorn; 40 authorized clients hold
sessions; the server gets SIGTERM. Each client must receive the ``reconnect``
notice and then a close frame with 4009, the closes spread over the drain
window, and the process must exit within the window plus a few seconds,
having logged nothing at ERROR.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
import websockets

from tests.servers import deployment, obtain_token
from tests.test_faults import Stream

WINDOW = 3.0
SESSIONS = 40


async def hold_until_closed(
    stream: Stream, timeout: float
) -> tuple[list[object], int | None, float]:
    """Every frame until the close; the close code; when it came (monotonic)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await stream.recv(timeout)
    except websockets.ConnectionClosed as exc:
        return stream.seen, (exc.rcvd.code if exc.rcvd is not None else None), time.monotonic()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_sigterm_sends_reconnect_then_4009_spread_over_the_window(
    server: str, tmp_path: Path
) -> None:
    """Every session gets ``{"event":"reconnect","data":{"within_ms": N}}`` with N at most
    the window, then close 4009; the closes spread over the window; the process exits
    within the window plus 5 s and logs no ERROR or traceback."""
    with deployment("embedded", tmp_path) as dep:
        dep.env["BROKER_WS_JSON"] = json.dumps({"DRAIN_WINDOW": WINDOW})
        host = dep.start_server("--no-feed", "--server", server)
        proc = dep.servers[0]
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        streams = []
        for _ in range(SESSIONS):
            stream = Stream(await websockets.connect(f"ws://{host}/", max_queue=None))
            await stream.send({"authorization": token})
            assert (await stream.recv())["event"] == "authorized"
            streams.append(stream)
        stream.seen.clear()
        for stream in streams:
            stream.seen.clear()

        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(
            *(hold_until_closed(stream, WINDOW + 10) for stream in streams)
        )
        for seen, code, _ in results:
            assert code == 4009, (code, seen)
            assert len(seen) == 1, seen
            notice = seen[0]
            assert isinstance(notice, dict) and notice["event"] == "reconnect", seen
            assert 0 <= notice["data"]["within_ms"] <= WINDOW * 1000, notice
        closed = sorted(at - sent_at for _, _, at in results)
        assert closed[-1] <= WINDOW + 1.0, closed
        assert closed[-1] - closed[0] >= WINDOW / 3, f"closes not spread: {closed}"
        err = await asyncio.to_thread(proc.communicate, timeout=WINDOW + 5)
        exited = time.monotonic() - sent_at
        assert proc.returncode is not None and exited <= WINDOW + 5
        log = err[1].decode(errors="replace")
        dep.servers.clear()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
