"""Heartbeats: what ``HEARTBEAT_INTERVAL`` costs one server process with 10,000 idle sessions.

    .venv/bin/python bench/heartbeat.py [--runs 3] [--sessions 10000] [--window 45]
        [--intervals 0,15,1] [--per-login 1] [--json out.json]

An authorized session that was sent nothing for ``HEARTBEAT_INTERVAL`` seconds
gets ``["h", ts_ms, {login: seq}]`` (broker_ws/session/heartbeat.py); one sweep
per process per second compares each authorized session's count of written
frames. This measures what that costs when nothing else happens: ``--sessions``
idle authorized sessions on one daphne process (``manage.py rundemo
--no-feed``; SQLite and the in-process bus as ``tests.servers.deployment
("embedded")``), once per interval of ``--intervals`` in every run: 0 (off,
the baseline), 15 (the default) and 1 (a stress setting). The intervals'
order rotates from run to run, so that drift of the machine's load hits each.

For each interval: a fresh server with ``BROKER_WS_JSON`` raising the limits
(sessions per login, unauthenticated sockets, the connect burst and rate per
address) and setting ``HEARTBEAT_INTERVAL``; fresh simplejwt tokens (the
default ``TOKEN_AUTHENTICATOR``) for the bench users (``bench.storm``'s
``storm0``..., one login each; ``--per-login K`` gives K sessions to each
login instead, and sessions of the same logins due in the same sweep share
one encoded heartbeat, so one login for everyone would flatter it). The
clients, ``--client-procs`` processes of raw asyncio sockets (uvloop) from
``bench.storm`` with their source addresses spread over 127.0.0.2-50, connect
every session (at most ``--concurrency`` per process in flight) and authorize
it; then they send nothing at all: a session's only traffic is what the
server writes, and the pongs to daphne's keepalive pings (protocol level,
never seen by broker_ws; without them daphne would drop the sockets). They
read every frame and count the heartbeats (text frames starting ``["h",``),
their delay (receipt - ``ts_ms``), and any other frame.

``--settle`` s after the last ``authorized`` (the connect storm's collections
and freezes done), the window of ``--window`` s: server CPU (utime + stime of
``/proc/<pid>/stat``, all threads, process tree) over it, in % of one core
and in µs per session per second, the heartbeats the clients received in it
against the expectation ``sessions x window / interval`` (and the period they
imply per session), and the machine's other load (``bg``, cores). Medians
over ``--runs``; ratios against interval 0.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import machine_busy, proc_tree, rss_kb, stop_process, wait_quiet  # noqa: E402
from bench.storm import SOURCE_ADDRESSES, Client, make_users  # noqa: E402
from tests.servers import deployment, free_port, wait_for_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
HEARTBEAT = b'["h",'


def limits(sessions: int) -> dict[str, Any]:
    """``BROKER_WS_JSON`` overrides that let ``sessions`` connect at once."""
    room = sessions + 1000
    return {
        "MAX_SESSIONS_PER_LOGIN": room,
        "MAX_UNAUTHENTICATED_PER_ADDRESS": room,
        "MAX_UNAUTHENTICATED": room,
        "CONNECT_BURST_PER_ADDRESS": room,
        "CONNECTS_PER_SECOND_PER_ADDRESS": 100000.0,
    }


def raise_nofile() -> int:
    """Lift the soft limit on open files to the hard one (inherited by the server and
    the clients); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def stat_cpu(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), seconds, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


# --- the client side: python bench/heartbeat.py --client CONFIG ------------------------------
class Idle(Client):
    """One session: upgrade, authorize, then only read (pings are answered)."""

    def __init__(self, host: bytes, hello: bytes, loop: asyncio.AbstractEventLoop, lags: Any):
        super().__init__(host, hello, loop)
        self.lags = lags
        self.heartbeats = 0
        self.other = 0
        self.pongs = 0

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(HEARTBEAT):
            self.heartbeats += 1
            ts_ms = int(payload[5 : payload.index(b",", 5)])
            self.lags.append(time.time() * 1000.0 - ts_ms)
            return
        if self.authorized_at is not None:
            self.other += 1
        super().on_text(payload)

    def write(self, opcode: int, data: bytes) -> None:
        if opcode == 0xA:
            self.pongs += 1
        super().write(opcode, data)


async def connect_all(config: dict[str, Any], clients: list[Idle]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sources = config["sources"]
    gate = asyncio.Semaphore(config["concurrency"])
    cpu0, started = sum(os.times()[:2]), time.time()

    async def one(client: Idle, index: int) -> None:
        async with gate:
            client.started = time.time()
            local = (sources[index % len(sources)], 0) if sources else None
            try:
                await loop.create_connection(
                    lambda: client, config["host"], config["port"], local_addr=local
                )
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
    done = [c.authorized_at for c in clients if c.authorized_at is not None]
    return {
        "started": started,
        "last_authorized": max(done, default=started),
        "authorized": len(done),
        "failures": failures,
        "cpu": sum(os.times()[:2]) - cpu0,
    }


async def client_main(config_path: str) -> None:
    """Serve the parent's commands on stdin: ``CONNECT``, ``COUNT``, ``BYE``."""
    config = json.loads(Path(config_path).read_text())
    loop = asyncio.get_running_loop()
    host = f"{config['host']}:{config['port']}".encode()
    hellos = [hello.encode() for hello in config["hellos"]]
    lags = array.array("d")
    clients = [Idle(host, hello, loop, lags) for hello in hellos]
    marks = [0] * len(clients)

    def reply(kind: str, body: dict[str, Any]) -> None:
        sys.stdout.write(f"{kind} {json.dumps(body)}\n")
        sys.stdout.flush()

    reply("READY", {"pid": os.getpid()})
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not line or line[0] == "BYE":
            break
        if line[0] == "CONNECT":
            reply("CONNECTED", await connect_all(config, clients))
        elif line[0] == "COUNT":
            # Heartbeats per session since the last COUNT (the window, the second time).
            per_session = [c.heartbeats - m for c, m in zip(clients, marks, strict=True)]
            marks[:] = [c.heartbeats for c in clients]
            ordered = sorted(lags)
            lags[:] = array.array("d")
            reply(
                "COUNTS",
                {
                    "at": time.time(),
                    "cpu": sum(os.times()[:2]),
                    "heartbeats": sum(c.heartbeats for c in clients),
                    "other": sum(c.other for c in clients),
                    "pongs": sum(c.pongs for c in clients),
                    "lost": sum(1 for c in clients if c.authorized_at and c.lost.done()),
                    "per_session_min": min(per_session, default=0),
                    "per_session_max": max(per_session, default=0),
                    "lag_p50": ordered[len(ordered) // 2] if ordered else None,
                    "lag_p99": ordered[int(len(ordered) * 0.99)] if ordered else None,
                    "lag_max": ordered[-1] if ordered else None,
                },
            )
    for client in clients:
        client.close("frame")
    await asyncio.sleep(1.0)
    for client in clients:
        client.abort()


def run_client(config_path: str) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - bench/requirements.txt installs it
        asyncio.run(client_main(config_path))
    else:
        uvloop.run(client_main(config_path))


# --- the parent ------------------------------------------------------------------------------
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
        self.pid = int(self.expect("READY")["pid"])

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, kind: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(kind + " "):
            raise SystemExit(f"client process: expected {kind}, got {line!r}")
        return json.loads(line.split(" ", 1)[1])  # type: ignore[no-any-return]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send("BYE")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)


def counts(procs: list[ClientProc]) -> list[dict[str, Any]]:
    for proc in procs:
        proc.send("COUNT")
    return [proc.expect("COUNTS") for proc in procs]


def delta(after: list[dict[str, Any]], before: list[dict[str, Any]], key: str) -> int:
    """The clients' total of ``key`` between two COUNTs."""
    return sum(a[key] - b[key] for a, b in zip(after, before, strict=True))


def measure(
    interval: float, index: int, args: argparse.Namespace, base: dict[str, str], work: Path
) -> dict[str, Any]:
    """One fresh server at ``interval``: connect, settle, the window; its figures."""
    env = dict(
        base, BROKER_WS_JSON=json.dumps({**limits(args.sessions), "HEARTBEAT_INTERVAL": interval})
    )
    users = make_users(math.ceil(args.sessions / args.per_login), env)  # fresh tokens (15 min)
    hellos = [
        json.dumps({"authorization": users[i // args.per_login][1]}) for i in range(args.sessions)
    ]
    port = free_port()
    tag = f"{index}-{interval:g}"
    err = (work / f"server-{tag}.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "rundemo", "--no-feed", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )
    procs: list[ClientProc] = []
    try:
        wait_for_port(port, server)
        client_err = (work / f"clients-{tag}.log").open("w")
        for i in range(args.client_procs):
            config = {
                "host": "127.0.0.1",
                "port": port,
                "hellos": hellos[i :: args.client_procs],
                "sources": SOURCE_ADDRESSES[i :: args.client_procs],
                "concurrency": args.concurrency,
                "timeout": args.timeout,
            }
            procs.append(ClientProc(config, work / f"client-{tag}-{i}.json", client_err))
        pids = proc_tree(server.pid)
        cpu_storm0 = stat_cpu(pids)
        for proc in procs:
            proc.send("CONNECT")
        connected = [proc.expect("CONNECTED") for proc in procs]
        storm_s = max(c["last_authorized"] for c in connected) - min(
            c["started"] for c in connected
        )
        storm_cpu = stat_cpu(pids) - cpu_storm0
        authorized = sum(c["authorized"] for c in connected)
        failures: dict[str, int] = {}
        for c in connected:
            for reason, n in c["failures"].items():
                failures[reason] = failures.get(reason, 0) + n
        time.sleep(args.settle)
        pids = proc_tree(server.pid)
        rss_mb = rss_kb(pids) / 1024
        before = counts(procs)
        busy0, cpu0, t0 = machine_busy(), stat_cpu(pids), time.monotonic()
        time.sleep(args.window)
        busy1, cpu1, t1 = machine_busy(), stat_cpu(pids), time.monotonic()
        after = counts(procs)
        window = t1 - t0
        server_cpu = cpu1 - cpu0
        clients_cpu = [a["cpu"] - b["cpu"] for a, b in zip(after, before, strict=True)]
        other = (busy1[0] - busy0[0]) - server_cpu - sum(clients_cpu)
        bg = max(other, 0.0) / max(busy1[1] - busy0[1], 1e-9) * (os.cpu_count() or 1)
        received = delta(after, before, "heartbeats")
        # The spec's expectation: one heartbeat per session per interval of silence.
        expected = authorized * window / interval if interval > 0 else 0.0
        lags = [a for a in after if a["lag_p99"] is not None]
        figures = {
            "interval": interval,
            "authorized": authorized,
            "failures": failures,
            "storm_s": storm_s,
            "storm_cpu_s": storm_cpu,
            "window_s": window,
            "server_cpu_s": server_cpu,
            "cpu_pct": server_cpu / window * 100.0,
            "us_per_session_s": server_cpu / window / max(authorized, 1) * 1e6,
            "heartbeats": received,
            "expected": expected,
            "period_s": authorized * window / received if received else None,
            "per_session": (
                min(a["per_session_min"] for a in after),
                max(a["per_session_max"] for a in after),
            ),
            "other_frames": delta(after, before, "other"),
            "pongs": delta(after, before, "pongs"),
            "lost": sum(a["lost"] for a in after),
            "lag_p50_ms": max((a["lag_p50"] for a in lags), default=None),
            "lag_p99_ms": max((a["lag_p99"] for a in lags), default=None),
            "lag_max_ms": max((a["lag_max"] for a in lags), default=None),
            "client_cpu_pct": max(clients_cpu) / window * 100.0,
            "bg": bg,
            "rss_mb": rss_mb,
        }
    finally:
        for proc in procs:
            proc.stop()
        stop_process(server)
        err.close()
    log = (work / f"server-{tag}.log").read_text(errors="replace")
    figures["tracebacks"] = log.count("Traceback")
    print(f"  run {index + 1} interval {interval:g}: {line(figures)}", flush=True)
    return figures


def line(f: dict[str, Any]) -> str:
    failed = f", FAILED {f['failures']}" if f["failures"] else ""
    hb = (
        f"{f['heartbeats']} heartbeats ({f['heartbeats'] / f['expected']:.3f} of "
        f"{f['expected']:.0f} expected, one per {f['period_s']:.2f} s per session, "
        f"{f['per_session'][0]}-{f['per_session'][1]} per session, "
        f"delay p50/p99/max {f['lag_p50_ms']:.1f}/{f['lag_p99_ms']:.1f}/{f['lag_max_ms']:.1f} ms)"
        if f["expected"]
        else f"{f['heartbeats']} heartbeats"
    )
    return (
        f"{f['authorized']} authorized in {f['storm_s']:.1f} s "
        f"(server {f['storm_cpu_s']:.1f} s CPU); window {f['window_s']:.1f} s: "
        f"server {f['cpu_pct']:.2f} % of a core = "
        f"{f['us_per_session_s']:.3f} us/session/s; {hb}; {f['other_frames']} other frames, "
        f"{f['pongs']} pongs, {f['lost']} lost; busiest client {f['client_cpu_pct']:.1f} %; "
        f"bg {f['bg']:.2f} cores; server RSS {f['rss_mb']:.0f} MB; "
        f"{f['tracebacks']} tracebacks{failed}"
    )


def report(rows: dict[float, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    def med(interval: float, key: str) -> float:
        return statistics.median(r[key] for r in rows[interval])

    print(
        f"\nmedians of {args.runs} run(s), {args.sessions} idle authorized sessions "
        f"({args.per_login} per login), {args.window:g} s windows:"
    )
    print(
        "interval s   server CPU %   us/session/s   x off   heartbeats   expected   received/exp"
        "   bg cores"
    )
    base = 0.0 in rows
    medians: dict[str, dict[str, float]] = {}
    for interval in rows:
        m = {
            k: med(interval, k)
            for k in ("cpu_pct", "us_per_session_s", "heartbeats", "expected", "bg")
        }
        ratio = m["cpu_pct"] / med(0.0, "cpu_pct") if base else float("nan")
        m["ratio"] = ratio
        share = m["heartbeats"] / m["expected"] if m["expected"] else float("nan")
        medians[f"{interval:g}"] = m
        print(
            f"{interval:>10g} {m['cpu_pct']:>14.2f} {m['us_per_session_s']:>14.3f}"
            f" {ratio:>7.2f} {m['heartbeats']:>12.0f} {m['expected']:>10.0f}"
            f" {share:>14.3f} {m['bg']:>10.2f}"
        )
    if base:
        for interval in rows:
            if interval > 0:
                extra = med(interval, "server_cpu_s") - med(0.0, "server_cpu_s")
                per_hb = extra / med(interval, "heartbeats") * 1e6
                print(
                    f"interval {interval:g}: +{extra / med(interval, 'window_s') * 100:.2f} % of a "
                    f"core over off, {per_hb:.1f} us of server CPU per heartbeat sent"
                )
    return {"medians": medians, "runs": {f"{k:g}": v for k, v in rows.items()}, "args": vars(args)}


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        raise_nofile()
        run_client(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat all intervals; medians")
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--per-login", type=int, default=1, help="sessions per user and login")
    parser.add_argument("--intervals", default="0,15,1", help="HEARTBEAT_INTERVAL values, s")
    parser.add_argument("--window", type=float, default=45.0, help="measurement window, s")
    parser.add_argument("--settle", type=float, default=10.0, help="s after the last authorized")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=500, help="connects in flight/proc")
    parser.add_argument("--timeout", type=float, default=120.0, help="s at most for the storm")
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="s at most, before each")
    parser.add_argument("--json", type=Path, help="write every figure there")
    args = parser.parse_args()
    intervals = [float(v) for v in args.intervals.split(",")]
    nofile = raise_nofile()
    needed = args.sessions // args.client_procs + 200 if args.client_procs > 1 else args.sessions
    if nofile < max(needed, args.sessions + 200):
        parser.error(f"RLIMIT_NOFILE is {nofile}: too low for {args.sessions} sessions")
    rows: dict[float, list[dict[str, Any]]] = {interval: [] for interval in intervals}
    with (
        tempfile.TemporaryDirectory(prefix="bws-heartbeat-") as tmp,
        deployment("embedded", Path(tmp)) as dep,
    ):
        base = dict(dep.env, DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost")
        print(
            f"{args.sessions} idle authorized sessions ({args.per_login} per user and login), "
            f"HEARTBEAT_INTERVAL {', '.join(f'{i:g}' for i in intervals)}, {args.window:g} s "
            f"windows, {args.runs} run(s), daphne, SQLite, in-process bus; load average "
            f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        for index in range(args.runs):
            shift = index % len(intervals)
            for interval in intervals[shift:] + intervals[:shift]:
                if args.wait_quiet > 0:
                    wait_quiet(args.wait_quiet)
                rows[interval].append(measure(interval, index, args, base, Path(tmp)))
    summary = report(rows, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    if any(r["failures"] or r["lost"] for rs in rows.values() for r in rs):
        raise SystemExit("some sessions were not authorized or were lost")


if __name__ == "__main__":
    main()
