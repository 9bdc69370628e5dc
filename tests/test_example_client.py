"""examples/client.py against a server that fails in the ways the new-user trial saw."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import urllib.error
from pathlib import Path
from typing import Any

import websockets

_PATH = Path(__file__).resolve().parent.parent / "examples" / "client.py"
_spec = importlib.util.spec_from_file_location("example_client", _PATH)
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
sys.modules["example_client"] = example
_spec.loader.exec_module(example)


class _DownSnapshots(example.Api):  # type: ignore[name-defined,misc]
    """The REST endpoints while the database is down: the snapshot answers 500."""

    def __init__(self, base: str) -> None:
        super().__init__(base, "alice", "x")
        self.access = "token"

    def access_expires(self) -> float:
        return float("inf")

    def snapshot(self, login: str) -> Any:
        raise urllib.error.HTTPError(self.base, 500, "Internal Server Error", {}, None)  # type: ignore[arg-type]


async def test_a_failing_snapshot_does_not_reset_the_back_off() -> None:
    """Authorized, then the snapshot fails: the client backs off as after any failure
    (it used to reset to 0.5 s on ``authorized`` and reconnect every 0.5 s)."""

    async def serve(ws: Any) -> None:
        await ws.recv()
        await ws.send(
            json.dumps(
                {
                    "event": "authorized",
                    "data": {
                        "user": "alice",
                        "logins": ["1001"],
                        "expires": 4102444800000,
                        "seq": {"1001": 3},
                    },
                }
            )
        )
        await ws.wait_closed()

    async with websockets.serve(serve, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = example.Client(_DownSnapshots(f"http://127.0.0.1:{port}"), [], None)
        client.backoff = 8.0  # after a few failures
        # run() counts the HTTPError as a failed connection and waits client.backoff.
        with contextlib.suppress(urllib.error.HTTPError):
            await asyncio.wait_for(client.session(), 10)
        assert client.backoff == 8.0


async def test_a_close_before_the_hello_is_a_close_code_not_a_crash() -> None:
    """A draining server may close (4009) as soon as the connection opens: the session
    ends with that code and the client reconnects (it crashed on the send)."""

    async def serve(ws: Any) -> None:
        await ws.close(4009)

    async with websockets.serve(serve, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = example.Client(_DownSnapshots(f"http://127.0.0.1:{port}"), [], None)
        for _ in range(20):  # the close races the send; either order must give 4009
            assert await asyncio.wait_for(client.session(), 10) == 4009


async def test_a_429_handshake_is_retried_no_sooner_than_its_retry_after(monkeypatch) -> None:
    """The server's admission refuses a connection with HTTP 429 and Retry-After: the
    client waits at least that long, not its 0.5 s back-off."""
    from broker_ws.servers.daphne import refusal_response

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(refusal_response(7))
        await writer.drain()
        writer.close()

    said: list[str] = []
    retry_logged = asyncio.Event()

    def log(*parts: Any) -> None:
        said.append(" ".join(str(p) for p in parts))
        if "retry in" in said[-1]:
            retry_logged.set()

    monkeypatch.setattr(example, "log", log)
    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = example.Client(_DownSnapshots(f"http://127.0.0.1:{port}"), [], None)
        running = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(retry_logged.wait(), 10)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert "handshake refused: HTTP 429" in said, said
    retry = next(line for line in said if "retry in" in line)
    assert float(retry.split("retry in ")[1].split(" s")[0]) >= 7.0, retry
