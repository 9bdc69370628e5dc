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
