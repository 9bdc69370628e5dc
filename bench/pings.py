"""How daphne's keepalive pings of sessions that connected together are grouped.

    .venv/bin/python bench/pings.py [--sessions 2000] [--duration 48]

Starts the demo under daphne (``manage.py rundemo --no-feed``, SQLite, no
Redis) twice: with :class:`broker_ws.servers.daphne.PingPhase` switched off (the baseline:
daphne's own schedule), and as shipped. Each time it opens ``--sessions``
WebSocket sessions at once; each sends one message (the text ``ping``) as
soon as it is open, as a client's authorize would be, and then stays quiet.
The server times every pass of daphne's ``timeout_checker`` that sends pings
(how long it held the event loop, and how many it sent); the client records
when every ping arrives. The pings of one pass leave the server only after
it (Twisted buffers the writes), so on the client side a pass shows as a
group of pings less than 0.5 s apart, whose first-to-last spread is the
flush of their sockets plus the client's own reading. Sessions are not
authorized (``AUTH_TIMEOUT`` is raised for the run), so nothing else runs on
the server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, wait_for_port  # noqa: E402

GROUP_GAP = 0.5  # s: daphne's passes are 2 s apart
CONNECTS_IN_FLIGHT = 200

Session = tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientProtocol]


async def open_session(port: int, gate: asyncio.Semaphore) -> Session:
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"))
        client.send_request(client.connect())
        while True:
            for data in client.data_to_send():
                writer.write(data)
            data = await reader.read(65536)
            if not data:
                raise SystemExit("the server closed a connection during the handshake")
            client.receive_data(data)
            if any(isinstance(event, Response) for event in client.events_received()):
                client.send_text(b"ping")  # daphne restarts its ping clock here
                for data in client.data_to_send():
                    writer.write(data)
                return reader, writer, client


async def record_pings(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: ClientProtocol,
    until: float, pings: list[float],
) -> None:  # fmt: skip
    try:
        async with asyncio.timeout(max(until - time.monotonic(), 0.0)):
            while True:
                for data in client.data_to_send():  # the pongs
                    writer.write(data)
                data = await reader.read(65536)
                if not data:
                    return
                client.receive_data(data)
                for event in client.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.PING:
                        pings.append(time.monotonic())
    except TimeoutError:
        pass
    finally:
        writer.close()


async def drive(port: int, sessions: int, duration: float) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    start = time.monotonic()
    opened = await asyncio.gather(*(open_session(port, gate) for _ in range(sessions)))
    pings: list[float] = []
    until = start + duration
    await asyncio.gather(*(record_pings(*session, until, pings) for session in opened))
    return start, pings


def groups_of(pings: list[float]) -> list[list[float]]:
    groups: list[list[float]] = []
    for at in sorted(pings):
        if groups and at - groups[-1][-1] < GROUP_GAP:
            groups[-1].append(at)
        else:
            groups.append([at])
    return groups


def server_passes(log: Path) -> list[tuple[int, float, float]]:
    """(pings, ms, of which garbage collection ms) of every pass that pinged, from
    the server's ``PASS`` lines."""
    passes = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("PASS "):
            _, count, ms, gc_ms = line.split()
            passes.append((int(count), float(ms), float(gc_ms)))
    return passes


def measure(spread: bool, sessions: int, duration: float, workdir: Path) -> tuple[int, float]:
    """Run one server; return its largest pass: pings, and ms holding the loop."""
    port = free_port()
    name = "spread" if spread else "daphne"
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"sqlite:///{workdir / name}.sqlite3",
        BROKER_WS_JSON=json.dumps({"AUTH_TIMEOUT": duration + 60}),
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True
    )
    serve = [str(Path(__file__).resolve()), "--serve", "on" if spread else "off"]
    log = workdir / f"{name}.log"
    with log.open("w") as err:
        server = subprocess.Popen(
            [sys.executable, *serve, "manage.py", "rundemo", "--no-feed", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            wait_for_port(port, server)
            start, pings = asyncio.run(drive(port, sessions, duration))
        finally:
            server.terminate()
            server.wait(timeout=10)
    passes = server_passes(log)
    groups = groups_of(pings)
    title = "with broker_ws.servers.daphne.PingPhase" if spread else "daphne alone (baseline)"
    print(f"\n{title}: {len(pings)} pings received in {len(groups)} groups; passes that pinged:")
    for (count, ms, gc_ms), group in zip(passes, groups, strict=False):
        flush = 1000.0 * (group[-1] - group[0])
        print(
            f"  {count:5d} pings, loop held {ms:6.1f} ms (GC {gc_ms:5.1f}) | client: at "
            f"{group[0] - start:6.2f} s {len(group):5d} pings over {flush:6.1f} ms"
        )
    return max((p[0] for p in passes), default=0), max((p[1] for p in passes), default=0.0)


def serve(spread: str, argv: list[str]) -> None:
    """Run the server (``argv``: manage.py rundemo ...) timing daphne's pings passes."""
    import daphne.server
    import daphne.ws_protocol

    import broker_ws.servers.daphne

    if spread == "off":  # the phase is a switch of the process, read per session
        broker_ws.servers.daphne.PING_PHASE.enabled = False
    sent = [0]
    send_ping = daphne.ws_protocol.WebSocketProtocol._sendAutoPing
    check = daphne.server.Server.timeout_checker

    def counted_ping(protocol: Any) -> None:
        sent[0] += 1
        send_ping(protocol)

    collecting = [0.0, 0.0]  # start of the collection running, seconds collected so far

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            collecting[1] += time.perf_counter() - collecting[0]

    def timed_check(server: Any) -> None:
        before, began, collected = sent[0], time.perf_counter(), collecting[1]
        check(server)
        if sent[0] > before:
            ms = 1000.0 * (time.perf_counter() - began)
            gc_ms = 1000.0 * (collecting[1] - collected)
            sys.stderr.write(f"PASS {sent[0] - before} {ms:.1f} {gc_ms:.1f}\n")
            sys.stderr.flush()

    gc.callbacks.append(on_gc)

    daphne.ws_protocol.WebSocketProtocol._sendAutoPing = counted_ping
    daphne.server.Server.timeout_checker = timed_check
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument(
        "--duration", type=float, default=48.0, help="s from the first connect (2 intervals)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bws-pings-") as tmp:
        base_largest, base_longest = measure(False, args.sessions, args.duration, Path(tmp))
        largest, longest = measure(True, args.sessions, args.duration, Path(tmp))
    print(
        f"\nlargest pass: {largest} pings against {base_largest} "
        f"({largest / max(base_largest, 1):.2f}x); longest hold of the event loop by a pass "
        f"{longest:.1f} ms against {base_longest:.1f} ms ({longest / max(base_longest, 1e-9):.2f}x)"
    )


if __name__ == "__main__":
    main()
