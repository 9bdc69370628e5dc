"""Cost per delivered frame of live state (publish_state) against the outbox path (push).

    .venv/bin/python bench/state.py [--logins 1000] [--rate 10] [--push-rate 1000]
                                    [--duration 10] [--runs 3] [--json out.json]

Per run: a fresh SQLite copy of a template with ``--logins`` bench users (one
account each, ``bench/bw_setup.py``), Redis db 5 flushed, the demo under
daphne (``manage.py rundemo --no-feed``, ``STATE_MAX_RATE`` 0 so that every
state frame is delivered: the cap would otherwise drop most of them, which is
the point of it but not what is measured), and one session per login, opened
by a client process of this script (raw sockets, like ``bench/loadgen.py``),
which counts the frames each session receives. Then, in turn, a publisher
process (a Django process, the public API):

* **state**: ``broker_ws.publish_state(login, "e", 5 fields)``, every login
  ``--rate`` times a second (10,000 frames/s by default);
* **push**: ``broker_ws.push(login, "b", 6 fields)``, the outbox path of an
  account frame (a database transaction numbering and storing the frame, then
  the bus on commit), at ``--push-rate`` frames/s round-robin over the logins:
  SQLite cannot commit 10,000 transactions a second, so this one is paced at
  what it can, and compared per frame.

State is published by ``--publishers`` processes (3), each for its share of
the logins: one Redis round trip per call keeps one process under 10,000
calls a second. Each phase lasts ``--duration`` s; then the client is asked until its counts
stop rising. Measured: the server's CPU (every thread, from ``schedstat``)
over the phase minus its idle CPU for as long, divided by the frames the
sessions received; the publisher's own CPU divided by the frames it
published. Printed per run and as medians over ``--runs``, with the ratios
push / state.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from fanout import cpu_seconds, proc_tree  # noqa: E402
from loadgen import mask_frame, take_upgrade_reply  # noqa: E402

from tests.servers import free_port, wait_for_port  # noqa: E402

PY = sys.executable
LOGIN_BASE = 700000
IDLE_S = 2.0
CONNECTS_IN_FLIGHT = 200


# --------------------------------------------------------------------------- client
class Counts:
    def __init__(self) -> None:
        self.by_marker: dict[str, int] = {}
        self.authorized = 0
        self.failed = 0


class Client(asyncio.Protocol):
    """One session: upgrade, authorize, then count data frames by marker."""

    def __init__(self, token: str, counts: Counts, ready: asyncio.Future[None]) -> None:
        self.token = token
        self.counts = counts
        self.ready = ready
        self.key = base64.b64encode(os.urandom(16))
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self.key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            status = take_upgrade_reply(buf, self.key)
            if status is None:
                return
            if status:
                self._fail()
                return
            self.upgraded = True
            auth = json.dumps({"authorization": self.token}).encode()
            assert self.transport is not None
            self.transport.write(mask_frame(0x1, auth))
        while len(buf) >= 2:
            opcode, size, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                return
            payload = bytes(buf[start : start + size])
            del buf[: start + size]
            if opcode == 0x1:
                self._text(payload)
            elif opcode == 0x9 and self.transport is not None:  # ping
                self.transport.write(mask_frame(0xA, payload))
            elif opcode == 0x8:
                self._fail()

    def _text(self, payload: bytes) -> None:
        if payload[:2] == b'["':
            marker = payload[2 : payload.index(b'"', 2)].decode()
            self.counts.by_marker[marker] = self.counts.by_marker.get(marker, 0) + 1
        elif payload.startswith(b'{"event":"authorized"') and not self.ready.done():
            self.counts.authorized += 1
            self.ready.set_result(None)

    def _fail(self) -> None:
        if not self.ready.done():
            self.counts.failed += 1
            self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()


async def run_client(port: int, tokens: list[str]) -> None:
    """Open one session per token, print READY, then answer COUNT lines with the counts."""
    loop = asyncio.get_running_loop()
    counts = Counts()
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    clients = []

    async def open_one(token: str) -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            transport, client = await loop.create_connection(
                lambda: Client(token, counts, ready), "127.0.0.1", port
            )
            clients.append(transport)
            await asyncio.wait_for(ready, 30)

    await asyncio.gather(*(open_one(token) for token in tokens))
    print("READY " + json.dumps({"authorized": counts.authorized, "failed": counts.failed}))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "COUNT":
            print("COUNT " + json.dumps(counts.by_marker), flush=True)
        elif line == "BYE":
            break
    for transport in clients:
        transport.close()


# --------------------------------------------------------------------------- publisher
def run_publisher(kind: str, logins: list[str], rate: float, duration: float) -> None:
    """Publish for ``duration`` s, paced to ``rate`` frames/s in total; print the
    frames published and this process's CPU seconds meanwhile."""
    import django

    django.setup()
    import broker_ws

    fields_state = [10000.0, 500.0, 9500.0, 2000.0, 12.5]
    fields_push = ["USD", 10000.0, 10012.5, 500.0, 9512.5, None]
    if kind == "state":

        def one(login: str) -> None:
            broker_ws.publish_state(login, "e", fields_state)
    else:

        def one(login: str) -> None:
            broker_ws.push(login, "b", fields_push)

    one(logins[0])  # connections and lazy set-up are not measured
    batch = max(1, int(rate / 100))  # frames per 10 ms tick
    interval = batch / rate
    print("GO", flush=True)
    cpu0, started = time.process_time(), time.monotonic()
    sent, next_at, i = 0, started, 0
    while time.monotonic() - started < duration:
        for _ in range(batch):
            one(logins[i % len(logins)])
            i += 1
        sent += batch
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    print("DONE " + json.dumps({"sent": sent, "cpu": cpu, "elapsed": elapsed}), flush=True)


# --------------------------------------------------------------------------- driver
def django_env(db: Path, redis_url: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{db}",
        DJANGO_DEBUG="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        BROKER_WS_JSON=json.dumps(extra or {}),
    )
    return env


class Line:
    """Line-oriented talk with a child process."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def expect(self, word: str, timeout: float = 120.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"child exited while waiting for {word}")
            if line.startswith(word):
                return line[len(word) :].strip()
        raise TimeoutError(word)

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def delivered(client: Line, marker: str, before: int) -> int:
    """Ask the client until its count of ``marker`` stops rising (0.5 s apart)."""
    last = -1
    while True:
        client.say("COUNT")
        now = json.loads(client.expect("COUNT ")).get(marker, 0) - before
        if now == last:
            return now
        last = now
        time.sleep(0.5)


def phase(
    kind: str,
    args: argparse.Namespace,
    env: dict[str, str],
    server_pids: list[int],
    client: Line,
    idle_rate: float,
) -> dict[str, float]:
    marker = "e" if kind == "state" else "b"
    client.say("COUNT")
    before = json.loads(client.expect("COUNT ")).get(marker, 0)
    rate = args.logins * args.rate if kind == "state" else args.push_rate
    # State: several publisher processes, each a share of the logins, since one
    # round trip to Redis per call caps one process below 10,000 calls/s. Push: one
    # (SQLite has one writer at a time anyway).
    count = args.publishers if kind == "state" else 1
    argv = [PY, __file__, "--publish", kind, "--logins", str(args.logins), "--rate",
            str(rate / count), "--duration", str(args.duration), "--share"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*argv, f"{k}/{count}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(count)
    ]
    publishers = [Line(proc) for proc in procs]
    for publisher in publishers:
        publisher.expect("GO")
    cpu0, t0 = cpu_seconds(server_pids), time.monotonic()
    done = [json.loads(p.expect("DONE ", timeout=args.duration * 4 + 60)) for p in publishers]
    frames = delivered(client, marker, before)
    server_cpu = cpu_seconds(server_pids) - cpu0 - idle_rate * (time.monotonic() - t0)
    for proc in procs:
        proc.wait(timeout=30)
    sent = sum(d["sent"] for d in done)
    return {
        "published": sent,
        "rate": sent / max(d["elapsed"] for d in done),
        "delivered": frames,
        "server_us": 1e6 * server_cpu / max(frames, 1),
        "publisher_us": 1e6 * sum(d["cpu"] for d in done) / max(sent, 1),
    }


def one_run(args: argparse.Namespace, template: Path, tmp: Path, run: int) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    db = tmp / f"run{run}.sqlite3"
    shutil.copyfile(template, db)
    env = django_env(db, args.redis_url, {"STATE_MAX_RATE": 0})
    tokens_path = tmp / f"tokens{run}.json"
    subprocess.run(
        [PY, str(BENCH / "bw_setup.py"), "tokens", "--users", str(args.logins),
         "--out", str(tokens_path)],
        cwd=ROOT, env=env, check=True,
    )  # fmt: skip
    tokens = [row["token"] for row in json.loads(tokens_path.read_text())]
    port = free_port()
    log = (tmp / f"server{run}.log").open("w")
    server = subprocess.Popen(
        [PY, "manage.py", "rundemo", "--no-feed", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    client_proc = None
    try:
        wait_for_port(port, server)
        (tmp / "client_tokens.json").write_text(json.dumps(tokens))
        client_proc = subprocess.Popen(
            [PY, __file__, "--client", str(port), str(tmp / "client_tokens.json")],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        client = Line(client_proc)
        ready = json.loads(client.expect("READY "))
        if ready["authorized"] != args.logins:
            raise SystemExit(f"sessions not all authorized: {ready}")
        pids = proc_tree(server.pid)
        cpu0 = cpu_seconds(pids)
        time.sleep(IDLE_S)
        idle_rate = (cpu_seconds(pids) - cpu0) / IDLE_S
        state = phase("state", args, env, pids, client, idle_rate)
        push = phase("push", args, env, pids, client, idle_rate)
        client.say("BYE")
        client_proc.wait(timeout=30)
    finally:
        if client_proc is not None and client_proc.poll() is None:
            client_proc.kill()
        server.terminate()
        server.wait(timeout=15)
        log.close()
    return {"idle_cores": idle_rate, "state": state, "push": push}


def ratios(result: dict[str, Any]) -> tuple[float, float]:
    """push / state, server and publisher CPU per frame."""
    state, push = result["state"], result["push"]
    return (
        push["server_us"] / max(state["server_us"], 1e-9),
        push["publisher_us"] / max(state["publisher_us"], 1e-9),
    )


def report(title: str, result: dict[str, Any], ratio: tuple[float, float] | None = None) -> None:
    """One table; ``ratio``: the ratios to print (default: this result's own)."""
    state, push = result["state"], result["push"]
    print(f"\n{title} (server idle {100 * result['idle_cores']:.1f} % of a core, subtracted)")
    print(f"  {'path':6} {'frames/s':>9} {'delivered':>10} {'server µs/frame':>16} "
          f"{'publisher µs/frame':>19}")  # fmt: skip
    for name, row in (("state", state), ("push", push)):
        print(
            f"  {name:6} {row['rate']:9.0f} {row['delivered']:10d} {row['server_us']:16.1f} "
            f"{row['publisher_us']:19.1f}"
        )
    server, publisher = ratio or ratios(result)
    print(f"  push / state: server {server:.2f}x, publisher {publisher:.2f}x")


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        asyncio.run(run_client(int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publish", choices=["state", "push"], help=argparse.SUPPRESS)
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="state frames/s per login")
    parser.add_argument("--push-rate", type=float, default=1000.0, help="push frames/s in total")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--publishers", type=int, default=3, help="publisher processes of the state phase"
    )
    parser.add_argument("--share", default="0/1", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
    )
    args = parser.parse_args()
    logins = [str(LOGIN_BASE + i) for i in range(args.logins)]
    if args.publish:
        k, count = (int(part) for part in args.share.split("/"))
        run_publisher(args.publish, logins[k::count], args.rate, args.duration)
        return
    if args.redis_url.rstrip("/").endswith("/0"):
        raise SystemExit("refusing to FLUSHDB Redis db 0: pass --redis-url .../5")
    results = []
    with tempfile.TemporaryDirectory(prefix="bws-state-") as name:
        tmp = Path(name)
        template = tmp / "template.sqlite3"
        subprocess.run(
            [PY, str(BENCH / "bw_setup.py"), "template", "--users", str(args.logins)],
            cwd=ROOT, env=django_env(template, args.redis_url), check=True,
        )  # fmt: skip
        for run in range(args.runs):
            result = one_run(args, template, tmp, run)
            report(f"run {run + 1}", result)
            results.append(result)
    if len(results) > 1:
        median = {
            "idle_cores": statistics.median(r["idle_cores"] for r in results),
            **{
                path: {
                    key: statistics.median(r[path][key] for r in results)
                    for key in results[0][path]
                }
                for path in ("state", "push")
            },
        }
        median["state"]["delivered"] = int(median["state"]["delivered"])
        median["push"]["delivered"] = int(median["push"]["delivered"])
        each = [ratios(r) for r in results]
        ratio = (statistics.median(r[0] for r in each), statistics.median(r[1] for r in each))
        report(f"medians of {len(results)} runs (ratios: medians of each run's)", median, ratio)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
