"""examples/client.py against a server that fails in the ways the new-user trial saw,
and against the real demo speaking protocol v1.1 (heartbeats, epochs, drain, status,
live state, dead connections).

:class:`Forwarder` is a TCP port in front of the demo's servers, as a load balancer
would be; tests/test_browser.py uses it too."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import signal
import socket
import sys
import threading
import urllib.error
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

from tests.servers import deployment

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


class _Snapshots(_DownSnapshots):
    """Snapshots of login 1001 at the seqs given, one per call."""

    def __init__(self, base: str, seqs: list[int]) -> None:
        super().__init__(base)
        self.seqs, self.calls = seqs, 0

    def snapshot(self, login: str) -> Any:
        self.calls += 1
        return {"seq": {login: self.seqs.pop(0)}, "frames": []}


async def test_a_heartbeat_seq_above_ours_is_reconciled(monkeypatch) -> None:
    """The last frame of 1001 (seq 4) never arrived; the heartbeat says 4: the client
    reconciles 1001 over REST at once, and ignores a heartbeat that says what it has."""
    reconciled = asyncio.Event()

    async def serve(ws: Any) -> None:
        hello = json.loads(await ws.recv())
        assert "resume" not in hello
        authorized = {
            "user": "alice",
            "logins": ["1001"],
            "expires": 4102444800000,
            "seq": {"1001": 3},
            "epoch": {"1001": "e1"},
            "protocol": "1.1",
        }
        await ws.send(json.dumps({"event": "authorized", "data": authorized}))
        await ws.send(json.dumps(["h", 1, {"1001": 3}]))  # up to date: nothing to do
        await ws.send(json.dumps(["h", 2, {"1001": 4}]))
        await reconciled.wait()
        await ws.close()

    async with websockets.serve(serve, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        api = _Snapshots(f"http://127.0.0.1:{port}", [3, 4])
        client = example.Client(api, [], None)
        lines = Lines()
        monkeypatch.setattr(example, "log", lines.log)
        session = asyncio.create_task(client.session())
        behind = await lines.wait(lambda line: line.startswith("heartbeat"), 0)
        assert "behind" not in behind, lines.lines
        await lines.wait(lambda line: line.startswith("snapshot of 1001: seq 4"))
        assert "behind on {'1001': 4}" in lines.lines[-2], lines.lines
        reconciled.set()
        await asyncio.wait_for(session, 10)
    assert api.calls == 2  # the initial snapshot, then the heartbeat's
    assert client.epochs == {"1001": "e1"}


class Forwarder:
    """A TCP port that forwards each connection to the current ``target`` ("host:port").

    Like a load balancer in front of a rolling restart: setting ``target`` sends new
    connections elsewhere and leaves the open ones where they are. :meth:`stall` turns
    the open connections into black holes (bytes are read and dropped both ways, nothing
    is closed): a half-open connection, as a dead NAT or a sleeping laptop leaves it.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            host, port = self.target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            stalled = threading.Event()
            with self._lock:
                self._open.append((client, upstream, stalled))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, stalled), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, stalled: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if not stalled.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """From now on, drop every byte of the connections open now."""
        with self._lock:
            for _, _, stalled in self._open:
                stalled.set()

    def cut_stalled(self) -> None:
        """Close the stalled connections (both ends see the connection go)."""
        with self._lock:
            cut = [conn for conn in self._open if conn[2].is_set()]
            self._open = [conn for conn in self._open if not conn[2].is_set()]
        for client, upstream, _ in cut:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            conns, self._open = self._open, []
        for client, upstream, _ in conns:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def v11_settings() -> str:
    """BROKER_WS_JSON for the live page and this client: heartbeats after 1 s of silence
    (the server checks once a second), a 2 s drain window, and Redis keys of this test
    only (the last status of a symbol is kept in Redis, across runs)."""
    return json.dumps(
        {
            "HEARTBEAT_INTERVAL": 1.0,
            "DRAIN_WINDOW": 2.0,
            "KEY_PREFIX": f"bws-v11-{uuid.uuid4().hex[:8]}",
        }
    )


#: The demo's feed at one EURUSD quote every 2 s: its equity state ``e`` moves for
#: login 1001 (an open EURUSD trade), and the sessions are idle long enough for heartbeats.
SLOW_FEED = ("--rate", "0.5", "--symbols", "EURUSD")
SAVE_BALANCE = (
    "from decimal import Decimal\n"
    "from project.broker.models import Balance\n"
    "b = Balance.objects.get(account__login='1001')\n"
    "b.balance = Decimal('{}')\n"
    "b.save()\n"
)
HALT_EURUSD = "import broker_ws; broker_ws.publish_status('EURUSD', 'halted')"


class Lines:
    """The client's log, awaited line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.changed = asyncio.Event()

    def log(self, *parts: Any) -> None:
        self.lines.append(" ".join(str(part) for part in parts))
        self.changed.set()

    async def wait(
        self, wanted: Callable[[str], bool], after: int = 0, timeout: float = 15.0
    ) -> str:
        """The first line from index ``after`` on for which ``wanted`` is true."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[after:]:
                    if wanted(line):
                        return line
                self.changed.clear()
                await self.changed.wait()

    def count(self, wanted: Callable[[str], bool], after: int = 0) -> int:
        return sum(1 for line in self.lines[after:] if wanted(line))


async def test_the_example_client_speaks_v1_1_to_the_demo(monkeypatch, tmp_path: Path) -> None:
    """examples/client.py against the demo (PostgreSQL, Redis, daphne) behind a forwarder:
    it offers ``broker-ws.v1`` and keeps the epochs; learns the heartbeat interval from
    the heartbeats; keeps live equity and an instrument status published from another
    process; takes a connection that goes silent for dead and resumes on a new one; on
    a SIGTERM drain it moves to the new server with resume and loses no frame."""
    lines = Lines()
    monkeypatch.setattr(example, "log", lines.log)
    with deployment("redis", tmp_path) as demo:
        demo.env["BROKER_WS_JSON"] = v11_settings()
        old = demo.start_server(*SLOW_FEED)
        forwarder = Forwarder(old)
        api = example.Api(f"http://{forwarder.host}", "alice", "alice-demo-pass")
        client = example.Client(api, ["EURUSD"], None)
        running = asyncio.create_task(client.run())
        try:
            hello = await lines.wait(lambda line: line.startswith("authorized as alice"))
            assert "protocol 1.1" in hello and "subprotocol broker-ws.v1" in hello, hello
            assert set(client.epochs) == {"1001", "1002"}, client.epochs

            # Idle between quotes: heartbeats come, and show a 1-2 s interval.
            await lines.wait(lambda line: line.startswith("heartbeat, seq"))
            assert 1.0 <= client.heartbeat_interval() < 3.0, client.heartbeat_interval()
            # Live equity of 1001 moves with the EURUSD quotes; no seq, no row.
            await lines.wait(lambda line: line.startswith("state e 1001"))
            assert len(client.state[("1001", "e")]) == 5, client.state
            # A halt from another process.
            assert "EURUSD" not in client.status, client.status
            await asyncio.to_thread(demo.shell, HALT_EURUSD)
            await lines.wait(lambda line: line == "status EURUSD halted")
            assert client.status["EURUSD"] == "halted"

            # The connection goes silent without closing: dead after 2.5 intervals.
            mark = len(lines.lines)
            forwarder.stall()
            silent = await lines.wait(lambda line: line.startswith("nothing received"), mark)
            resumed = await lines.wait(lambda line: line.startswith("resuming from"), mark)
            assert "'1001'" in resumed and "epochs {" in resumed, resumed
            await lines.wait(lambda line: line.startswith("authorized as alice"), mark)
            seconds = float(silent.split("for ")[1].split(" s")[0])
            assert seconds <= 2.5 * client.heartbeat_interval() + 1.0, silent
            forwarder.cut_stalled()

            # A deploy: a new server joins, the old one gets SIGTERM and drains.
            forwarder.target = demo.start_server("--no-feed")
            seq = client.seq["1001"]
            mark = len(lines.lines)
            demo.servers[0].send_signal(signal.SIGTERM)
            await lines.wait(lambda line: line.startswith("server restarting"), mark)
            # Saved during the drain: it reaches the client on the old connection or,
            # by resume, on the new one; either way once, with the next seq.
            await asyncio.to_thread(demo.shell, SAVE_BALANCE.format("12345.67"))
            frame = await lines.wait(lambda line: line.startswith('["b","1001",'), mark)
            assert json.loads(frame)[2] == seq + 1, (frame, seq)
            assert client.rows["1001"][("b", "USD")][4] == example.Decimal("12345.67")
            await lines.wait(lambda line: line.startswith("resuming from"), mark)
            await lines.wait(lambda line: line.startswith("authorized as alice"), mark)
            await asyncio.to_thread(demo.servers[0].wait, 10)
            # No REST snapshot, no gap, no resync: the resume covered the move.
            tail = lines.lines[mark:]
            assert not [line for line in tail if re.match("snapshot of|gap on|resync", line)], tail
            assert lines.count(lambda line: line.startswith('["b","1001",'), mark) == 1, tail
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            forwarder.close()
