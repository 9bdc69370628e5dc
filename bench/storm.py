"""Reconnect storms: 2000 sessions re-authorizing with ``resume`` at once, and the GC after.

    .venv/bin/python bench/storm.py [--runs 3] [--sessions 2000] [--redis] [--json out.json]

When a server process restarts, its clients all come back at once, each with
its token and a ``resume`` naming the last seq it saw. This measures what
such a storm costs one daphne process: how long until every session has its
``authorized`` reply, and how long the garbage collector then holds the event
loop, because every session's objects are walked by a full collection, and a
session that closed is freed only by one (docs/deployment.md, "gc.freeze()").

Each run starts the demo (``manage.py rundemo --no-feed``, daphne, SQLite as
``tests.servers.deployment("embedded")``; ``--redis`` adds ``REDIS_URL``, db
5 by default) with ``MAX_SESSIONS_PER_LOGIN`` and
``MAX_UNAUTHENTICATED_PER_ADDRESS`` raised to 5000, obtains alice's token
over ``/api/token/``, learns her logins' current seqs from one session, then:

1. **storm 1** (a fresh process): ``--sessions`` sessions connect at the same
   instant, each sending ``{"authorization": token, "resume": {login: seq}}``
   as soon as it is open; measured from the first connect to the last
   ``authorized`` (and p50/p99 of every session's ``authorized``, from the
   first connect). ``--hold`` s later the server runs a full collection
   (``gc.collect()``, timed): the first full collection after the storm, which
   the collector's thresholds would call for at some later moment anyway and
   which walks what the storm left. Then every client closes its session
   (close frame 1001, or ``--close drop``: TCP reset), as when the clients
   of a process that restarts go;
2. **storm 2**, as soon as the server has seen those closes: the same
   sessions again, on a process that holds what the closed sessions left to
   the cycle collector, then the same timed full collection, and the closes;
3. ``--settle`` s later, a last full collection: the objects it and every
   collection since the closes of storm 2 freed, divided by the sessions,
   are the objects a closed session leaves to the cycle collector instead of
   freeing them by reference counting.

The server runs under this file's ``--serve`` wrapper, which logs every
collection (start, generation, duration, objects collected) through
``gc.callbacks`` into a file, and runs the timed full collection on SIGUSR1 (in
the event loop's thread, through Twisted's ``callFromThread``). The pauses
reported for a storm are the collections from its first connect to its forced
collection. The clients are ``--client-procs`` processes (2 by default) of raw
asyncio sockets (uvloop when installed), hand-written upgrade and frames as in
``bench/loadgen.py``, their source addresses spread over 127.0.0.2-127.0.0.50
(``--no-spread``: 127.0.0.1), so that they are not what a storm waits for;
their CPU during each storm is printed. Everything stays on loopback; each
storm is bounded by ``--timeout``. With ``--runs N`` every figure is printed
per run and as the median over the runs, with the machine's other load during
the storms (``bg``, cores: all CPU busy time minus the server's and the
clients'; the machine this was written on has 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import runpy
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import (  # noqa: E402
    cpu_seconds,
    machine_busy,
    proc_tree,
    rss_kb,
    stop_process,
    wait_quiet,
)
from bench.loadgen import mask_frame, take_upgrade_reply  # noqa: E402
from tests.servers import deployment, free_port, obtain_token, wait_for_port  # noqa: E402

USER, PASSWORD = "alice", "alice-demo-pass"
LIMITS = {"MAX_SESSIONS_PER_LOGIN": 5000, "MAX_UNAUTHENTICATED_PER_ADDRESS": 5000}
SOURCE_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 51)]
CLOSE_GOING_AWAY = 1001


# --- the server side: python bench/storm.py --serve LOG manage.py rundemo ... ----------------
def serve(log_path: str, argv: list[str]) -> None:
    """Run ``argv`` (``manage.py rundemo ...``) logging every garbage collection to
    ``log_path``; SIGUSR1 runs a timed full collection in the event loop's thread.

    The collections are kept in memory and written out with each timed one (a
    write per collection would cost the server a few per cent of the storm).
    """
    log = open(log_path, "a")  # noqa: SIM115 - open for the process's life
    started = [0.0, 0.0]  # perf_counter, epoch s
    seen: list[tuple[float, int, float, int]] = []  # start, generation, ms, collected

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0], started[1] = time.perf_counter(), time.time()
            return
        ms = (time.perf_counter() - started[0]) * 1000.0
        seen.append((started[1], info["generation"], ms, info["collected"]))

    def write_out() -> None:
        lines = [f"GC {at:.6f} {gen} {ms:.3f} {collected}\n" for at, gen, ms, collected in seen]
        seen.clear()
        log.write("".join(lines))

    def full_collection() -> None:
        write_out()
        module = getattr(sys.modules.get("broker_ws"), "__file__", "?")
        tracked = len(gc.get_objects())
        log.write(f"FORCE {time.time():.6f} {tracked} {gc.get_freeze_count()} {module}\n")
        gc.collect()
        write_out()
        log.write(f"FORCED {time.time():.6f} {len(gc.get_objects())}\n")
        log.flush()

    def on_usr1(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(full_collection)

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, on_usr1)
    sys.argv = argv
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")


@dataclass
class Collection:
    at: float  # epoch s, start
    generation: int
    ms: float
    collected: int
    forced: bool = False


@dataclass
class Forced:
    """A timed full collection the bench asked for."""

    collection: Collection
    tracked_before: int
    tracked_after: int
    frozen: int
    module: str


def read_gc_log(path: Path) -> tuple[list[Collection], list[Forced]]:
    collections: list[Collection] = []
    forced: list[Forced] = []
    pending: list[str] | None = None
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["GC"] and len(parts) == 5:
            item = Collection(float(parts[1]), int(parts[2]), float(parts[3]), int(parts[4]))
            item.forced = pending is not None
            collections.append(item)
        elif parts[:1] == ["FORCE"]:
            pending = parts
        elif parts[:1] == ["FORCED"] and pending is not None and collections:
            before, frozen, module = int(pending[2]), int(pending[3]), pending[4]
            forced.append(Forced(collections[-1], before, int(parts[2]), frozen, module))
            pending = None
    return collections, forced


# --- the client side: python bench/storm.py --client CONFIG ---------------------------------
class Client(asyncio.Protocol):
    """One session: upgrade, authorize with resume, wait; close when told."""

    def __init__(self, host: bytes, hello: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.hello = hello
        self.key = base64.b64encode(os.urandom(16))
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.authorized_at: float | None = None
        self.failure: str | None = None
        self.authorized: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.host, self.key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost ({exc!r})" if exc else "connection closed")
        if not self.lost.done():
            self.lost.set_result(None)

    def fail(self, reason: str) -> None:
        if self.authorized_at is None and self.failure is None:
            self.failure = reason
        if not self.authorized.done():
            self.authorized.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            refused = take_upgrade_reply(buf, self.key)
            if refused is None:
                return  # the reply's head is not all here yet
            if refused:
                self.fail("handshake refused: " + refused)
                self.abort()
                return
            self.upgraded = True
            self.write(0x1, self.hello)
        while len(buf) >= 2:
            length, header = buf[1] & 0x7F, 2
            if length == 126:
                length, header = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, header = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < header + length:
                return
            opcode, payload = buf[0] & 0x0F, bytes(buf[header : header + length])
            del buf[: header + length]
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x9:
                self.write(0xA, payload)  # pong
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.fail(f"closed by the server with {code}")
                self.write(0x8, payload[:2])
                if self.transport is not None:
                    self.transport.close()

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(b'{"event":"authorized"'):
            if not self.authorized.done():
                self.authorized_at = time.time()
                self.authorized.set_result(None)
        elif payload.startswith(b'{"event":"error"') or payload.startswith(b'{"event":"resync"'):
            self.fail(payload.decode(errors="replace")[:200])

    def write(self, opcode: int, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(opcode, data))

    def close(self, how: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if how == "drop":
            self.abort()
        else:
            self.write(0x8, CLOSE_GOING_AWAY.to_bytes(2, "big"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def storm(config: dict[str, Any], clients: list[Client]) -> dict[str, Any]:
    """Open every session at ``config["at"]`` (epoch s); report when each was authorized."""
    loop = asyncio.get_running_loop()
    host, port = config["host"], config["port"]
    sources = config["sources"]
    await asyncio.sleep(max(config["at"] - time.time(), 0.0))
    cpu0 = sum(os.times()[:2])

    async def one(client: Client, index: int) -> None:
        client.started = time.time()
        local = (sources[index % len(sources)], 0) if sources else None
        try:
            await loop.create_connection(lambda: client, host, port, local_addr=local)
        except OSError as exc:
            client.fail(f"connect failed ({exc!r})")
        await client.authorized

    try:
        async with asyncio.timeout(config["timeout"]):
            await asyncio.gather(*(one(c, i) for i, c in enumerate(clients)))
    except TimeoutError:
        for client in clients:
            client.fail("no authorized reply in time")
    failures: dict[str, int] = {}
    for client in clients:
        if client.failure is not None:
            failures[client.failure] = failures.get(client.failure, 0) + 1
    return {
        "started": [c.started for c in clients],
        "authorized": [c.authorized_at for c in clients if c.authorized_at is not None],
        "failures": failures,
        "cpu": sum(os.times()[:2]) - cpu0,
    }


async def close_all(clients: list[Client], how: str, timeout: float) -> dict[str, Any]:
    """Close every session and wait (at most ``timeout``) until the server closed TCP."""
    started = time.time()
    for client in clients:
        client.close(how)
    pending = [c.lost for c in clients if not c.lost.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=timeout)
    else:
        late = set()
    for client in clients:
        if not client.lost.done():
            client.abort()
    return {"seconds": time.time() - started, "late": len(late)}


async def client_main(config_path: str) -> None:
    """Serve the parent's commands on stdin: ``STORM at``, ``CLOSE``, ``BYE``."""
    config = json.loads(Path(config_path).read_text())
    loop = asyncio.get_running_loop()
    hellos = [hello.encode() for hello in config["hellos"]]
    host = f"{config['host']}:{config['port']}".encode()
    clients: list[Client] = []

    def reply(kind: str, body: dict[str, Any]) -> None:
        sys.stdout.write(f"{kind} {json.dumps(body)}\n")
        sys.stdout.flush()

    reply("READY", {"pid": os.getpid()})
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not line or line[0] == "BYE":
            return
        if line[0] == "STORM":
            clients = [
                Client(host, hellos[i % len(hellos)], loop) for i in range(config["sessions"])
            ]
            reply("DONE", await storm({**config, "at": float(line[1])}, clients))
        elif line[0] == "CLOSE":
            reply("CLOSED", await close_all(clients, config["close"], config["timeout"]))
            clients = []


def run_client(config_path: str) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - bench/requirements.txt installs it
        asyncio.run(client_main(config_path))
    else:
        uvloop.run(client_main(config_path))


# --- the orchestrator ------------------------------------------------------------------------
@dataclass
class StormFigures:
    """One storm of one run."""

    seconds: float  # first connect -> last authorized
    p50: float
    p99: float
    authorized: int
    failures: dict[str, int]
    first_full_ms: float  # the timed full collection after the storm
    tracked: int  # objects the collector tracked before it (frozen apart)
    frozen: int  # objects in the permanent generation (gc.freeze()) then
    collected_by_first_full: int
    natural_full: list[float]  # ms of the collector's own full collections in the storm + hold
    max_pause: float  # longest collection from the first connect to the timed full one
    pauses_over_10: int
    client_cpu: float  # s, busiest client process
    server_cpu: float  # s, during the storm
    bg: float  # cores, other load during the storm
    close_seconds: float = 0.0


@dataclass
class RunFigures:
    storms: list[StormFigures] = field(default_factory=list)
    per_closed_session: float = 0.0  # objects left to the cycle collector
    frozen_after_closes: int = 0
    rss_mb: list[float] = field(default_factory=list)
    module: str = ""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def current_seqs(host: str, token: str) -> dict[str, int]:
    """Alice's logins and their current seqs, from one ``authorized`` reply."""
    import websockets

    async with websockets.connect(f"ws://{host}/", open_timeout=20) as ws:
        await ws.send(json.dumps({"authorization": token}))
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if isinstance(reply, dict) and reply.get("event") == "authorized":
                return {str(k): int(v) for k, v in reply["data"]["seq"].items()}
            if isinstance(reply, dict) and reply.get("event") == "error":
                raise SystemExit(f"the first session was refused: {reply}")


class ClientProc:
    """One client process and its line protocol."""

    def __init__(self, config: dict[str, Any], path: Path, err: IO[str]) -> None:
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        self.expect("READY")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, kind: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(kind + " "):
            raise SystemExit(f"client process: expected {kind}, got {line!r}")
        return json.loads(line.split(" ", 1)[1])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send("BYE")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)


def force_full_collection(server: subprocess.Popen[bytes], log: Path) -> None:
    """SIGUSR1 the server and wait for its timed full collection to be logged."""
    done = log.read_text().count("FORCED ")
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while log.read_text().count("FORCED ") == done:
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the server did not run the full collection")
        time.sleep(0.05)


#: Creates the storm's users (one login each, no password: their tokens are minted
#: here) and prints ``[[login, access token], ...]``; run by ``manage.py shell``.
MAKE_USERS = """
import json, sys
from django.contrib.auth import get_user_model
from rest_framework_simplejwt.tokens import AccessToken
from project.broker.models import Account
User = get_user_model()
count = COUNT
users = []
for i in range(count):
    user = User(username=f"storm{i}")
    user.set_unusable_password()
    users.append(user)
User.objects.bulk_create(users, ignore_conflicts=True)
users = list(User.objects.filter(username__startswith="storm").order_by("id")[:count])
Account.objects.bulk_create(
    [Account(user=u, login=f"S{u.id}") for u in users], ignore_conflicts=True
)
print(json.dumps([[f"S{u.id}", str(AccessToken.for_user(u))] for u in users]))
"""


def make_users(count: int, env: dict[str, str]) -> list[tuple[str, str]]:
    """``count`` users of their own, one login each: ``[(login, token), ...]``."""
    script = MAKE_USERS.replace("COUNT", str(count))
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [(login, token) for login, token in json.loads(out.strip().splitlines()[-1])]


def one_run(
    index: int,
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    users: list[tuple[str, str]],
) -> RunFigures:
    if args.wait_quiet > 0:
        load = wait_quiet(args.wait_quiet)
        print(f"  run {index + 1}: other load {load:.2f} cores before it", flush=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    gc_log = work / f"gc-{index}.log"
    gc_log.write_text("")
    err = (work / f"server-{index}.log").open("w")
    command = [str(Path(__file__).resolve()), "--serve", str(gc_log), "manage.py", "rundemo"]
    server = subprocess.Popen(
        [sys.executable, *command, "--no-feed", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )
    procs: list[ClientProc] = []
    figures = RunFigures()
    try:
        wait_for_port(port, server)
        if users:
            hellos = [
                json.dumps({"authorization": token, "resume": {login: 0}})
                if args.resume
                else json.dumps({"authorization": token})
                for login, token in users
            ]
        else:
            token = obtain_token(host, USER, PASSWORD)["access"]
            seqs = asyncio.run(current_seqs(host, token))
            hellos = [json.dumps({"authorization": token, "resume": seqs})]
        counts = [args.sessions // args.client_procs] * args.client_procs
        counts[0] += args.sessions - sum(counts)
        client_err = (work / f"clients-{index}.log").open("w")
        for i, count in enumerate(counts):
            config = {
                "host": "127.0.0.1",
                "port": port,
                "sessions": count,
                "hellos": hellos[i :: args.client_procs] if users else hellos,
                "sources": [] if args.no_spread else SOURCE_ADDRESSES[i :: args.client_procs],
                "timeout": args.timeout,
                "close": args.close,
            }
            procs.append(ClientProc(config, work / f"client-{index}-{i}.json", client_err))
        pids = proc_tree(server.pid)
        for number in range(args.storms):
            at = time.time() + 0.3
            busy0, server0 = machine_busy(), cpu_seconds(pids)
            for proc in procs:
                proc.send(f"STORM {at:.6f}")
            results = [proc.expect("DONE") for proc in procs]
            busy1, server1 = machine_busy(), cpu_seconds(pids)
            time.sleep(args.hold)
            force_full_collection(server, gc_log)
            figures.rss_mb.append(rss_kb(pids) / 1024)
            for proc in procs:
                proc.send("CLOSE")
            closes = [proc.expect("CLOSED") for proc in procs]
            time.sleep(args.settle)  # daphne reaps closed connections every second
            collections, forced = read_gc_log(gc_log)
            figures.module = forced[-1].module
            storm_figures = summarize(results, collections, forced[-1], server1 - server0)
            clients_cpu = sum(r["cpu"] for r in results)
            other = (busy1[0] - busy0[0]) - (server1 - server0) - clients_cpu
            storm_figures.bg = max(other, 0.0) / max(busy1[1] - busy0[1], 1e-9) * os.cpu_count()
            storm_figures.close_seconds = max(c["seconds"] for c in closes)
            figures.storms.append(storm_figures)
            print(f"  run {index + 1} storm {number + 1}: {storm_line(storm_figures)}", flush=True)
        before_closes = read_gc_log(gc_log)[1][-1].collection.at  # the last storm's
        force_full_collection(server, gc_log)
        collections, forced = read_gc_log(gc_log)
        figures.frozen_after_closes = forced[-1].frozen
        # What every collection since the last storm's timed one found (it ran before the
        # closes): the closed sessions' objects, freed by the cycle collector.
        freed = sum(c.collected for c in collections if c.at > before_closes)
        figures.per_closed_session = freed / args.sessions
        print(
            f"  run {index + 1}: {figures.per_closed_session:.1f} objects per closed session "
            f"left to the cycle collector; {figures.frozen_after_closes} frozen objects after "
            f"the closes; server RSS after each storm "
            + " / ".join(f"{mb:.1f}" for mb in figures.rss_mb)
            + f" MB; broker_ws from {figures.module}",
            flush=True,
        )
    finally:
        for proc in procs:
            proc.stop()
        stop_process(server)
        err.close()
    return figures


def summarize(
    results: list[dict[str, Any]],
    collections: list[Collection],
    forced: Forced,
    server_cpu: float,
) -> StormFigures:
    first = min(min(r["started"]) for r in results if r["started"])
    authorized = [t - first for r in results for t in r["authorized"]]
    failures: dict[str, int] = {}
    for result in results:
        for reason, count in result["failures"].items():
            failures[reason] = failures.get(reason, 0) + count
    window = [c for c in collections if first <= c.at <= forced.collection.at]
    natural = [c for c in window if not c.forced]
    return StormFigures(
        seconds=max(authorized) if authorized else float("nan"),
        p50=percentile(authorized, 0.5) if authorized else float("nan"),
        p99=percentile(authorized, 0.99) if authorized else float("nan"),
        authorized=len(authorized),
        failures=failures,
        first_full_ms=forced.collection.ms,
        tracked=forced.tracked_before,  # gc.get_objects() leaves the frozen ones out
        frozen=forced.frozen,
        collected_by_first_full=forced.collection.collected,
        natural_full=[c.ms for c in natural if c.generation == 2],
        max_pause=max((c.ms for c in natural), default=0.0),
        pauses_over_10=sum(1 for c in natural if c.ms >= 10.0),
        client_cpu=max(r["cpu"] for r in results),
        server_cpu=server_cpu,
        bg=0.0,
    )


def storm_line(s: StormFigures) -> str:
    failed = f", FAILED {sum(s.failures.values())}: {s.failures}" if s.failures else ""
    natural = "/".join(f"{ms:.0f}" for ms in s.natural_full) or "none"
    return (
        f"{s.authorized} authorized in {s.seconds:.2f} s (p50 {s.p50:.2f}, p99 {s.p99:.2f}); "
        f"first full GC after it {s.first_full_ms:.1f} ms over {s.tracked} tracked objects "
        f"({s.collected_by_first_full} freed, {s.frozen} frozen); collector's own full GCs "
        f"in storm {natural} ms, "
        f"longest pause {s.max_pause:.1f} ms, {s.pauses_over_10} >= 10 ms; CPU server "
        f"{s.server_cpu:.2f} s, busiest client {s.client_cpu:.2f} s; bg {s.bg:.2f} cores"
        f"{failed}"
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[RunFigures], args: argparse.Namespace) -> dict[str, Any]:
    storms: list[dict[str, Any]] = []
    print(f"\nmedians of {len(runs)} run(s), {args.sessions} sessions:")
    print(
        "storm  authorized s   p50 s   p99 s  first full GC ms  tracked objs  longest pause ms"
        "  bg cores"
    )
    for number in range(args.storms):
        rows = [run.storms[number] for run in runs]
        row = {
            "seconds": median([r.seconds for r in rows]),
            "p50": median([r.p50 for r in rows]),
            "p99": median([r.p99 for r in rows]),
            "first_full_ms": median([r.first_full_ms for r in rows]),
            "tracked": median([float(r.tracked) for r in rows]),
            "max_pause": median([r.max_pause for r in rows]),
            "bg": median([r.bg for r in rows]),
            "failed": sum(sum(r.failures.values()) for r in rows),
            "per_run": [r.__dict__ for r in rows],
        }
        storms.append(row)
        print(
            f"{number + 1:>5} {row['seconds']:>13.2f} {row['p50']:>7.2f} {row['p99']:>7.2f}"
            f" {row['first_full_ms']:>17.1f} {row['tracked']:>13.0f} {row['max_pause']:>17.1f}"
            f" {row['bg']:>9.2f}" + (f"  FAILED {row['failed']}" if row["failed"] else "")
        )
    per_session = median([run.per_closed_session for run in runs])
    print(f"objects per closed session left to the cycle collector: {per_session:.1f}")
    return {"storms": storms, "per_closed_session": per_session, "args": vars(args)}


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3:])
        return
    if sys.argv[1:2] == ["--client"]:
        run_client(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="fresh server per run; medians")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--storms", type=int, default=2, help="storms per run (2: see above)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--hold", type=float, default=3.0, help="s after a storm, then full GC")
    parser.add_argument("--settle", type=float, default=2.5, help="s after the closes")
    parser.add_argument("--timeout", type=float, default=60.0, help="s at most per storm")
    parser.add_argument("--close", choices=["frame", "drop"], default="frame")
    parser.add_argument("--no-spread", action="store_true", help="clients on 127.0.0.1 only")
    parser.add_argument("--redis", action="store_true", help="REDIS_URL (BENCH_REDIS_URL)")
    parser.add_argument(
        "--one-user",
        action="store_true",
        help=f"every session is {USER}'s (default: a user and login of its own each)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each run wait up to S s for "
        "other load under 0.3 cores (bench/fanout.py's rule)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="sessions of their own users authorize without resume (a connect storm)",
    )
    parser.add_argument("--json", type=Path, help="write every figure there")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bws-storm-") as tmp,
        deployment("embedded", Path(tmp)) as dep,
    ):
        env = dict(
            dep.env,
            BROKER_WS_JSON=json.dumps(LIMITS),
            DJANGO_DEBUG="0",  # as in production (and bench/fanout.py): no query log
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        )
        if args.redis:
            env["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
        print(
            f"{args.sessions} sessions "
            f"({'all ' + USER + chr(39) + 's' if args.one_user else 'a user and login each'}) "
            "re-authorizing with resume, "
            f"{args.client_procs} client processes, {args.runs} run(s), "
            f"{'SQLite + Redis' if args.redis else 'SQLite, in-process bus'}; "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        users = make_users(args.sessions, env) if not args.one_user else []
        runs = [one_run(i, args, env, Path(tmp), users) for i in range(args.runs)]
        summary = report(runs, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
