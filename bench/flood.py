"""Bad-token flood: what a stream of refused authorizations from one address does to a server.

    .venv/bin/python bench/flood.py [--quick] [--flood-conns 2000] [--flood-seconds 20]
                                    [--existing 200] [--after-seconds 60]
                                    [--server daphne|uvicorn] [--runs 1] [--redis URL]

Why: a client (or an attacker) that reconnects at once with a token the
server refuses costs the server a TCP accept, an HTTP upgrade, a token check
and a close, again and again. This benchmark shows how much of the server
such a flood takes away from everybody else, so that a throttling fix can be
proved against the same numbers.

What it does, per run: migrate a temporary SQLite database with the demo data
(``tests.servers.deployment("embedded", ...)``: no Redis, in-process bus,
unless ``--redis``), start the demo server (``manage.py rundemo --no-feed``,
daphne or uvicorn, which serves in the ``rundemo`` process itself) on a free
port of 127.0.0.1, get a token for alice over ``POST /api/token/`` and open
``--existing`` authorized sessions with it, subscribed to nothing. Then:

* **before** (``--baseline-seconds``, plus 1.5 s in which the flood processes
  start): the probes below, with no flood;
* **flood** (``--flood-seconds``): ``--flood-conns`` client loops in
  ``--flood-procs`` processes (multiprocessing, raw sockets on uvloop), every
  socket bound to the source address 127.0.0.2, each loop repeatedly:
  connect, send ``{"authorization": "bad.token.value"}``, read the error
  frame and the close frame, answer the close, wait for the server to drop
  the TCP connection, connect again at once. An attempt counts as ended by
  the server whatever the server did (close frame, reset, HTTP refusal); the
  outcomes are counted by kind, with the error codes and connect errors. The
  flood stops by itself: attempts still open at its end are aborted ("cut at
  the end");
* **after** (``--after-seconds``): nothing but the probes.

Probes, from 127.0.0.1 (another address than the flood), all through the
run: every 250 ms a new "good client" connects, sends a valid alice token and
times connect -> ``authorized`` (and connect -> HTTP 101 on its own); every
200 ms each of ``--ping-sessions`` existing sessions sends ``ping`` and times
the ``pong``. The server's CPU (``utime + stime`` of ``/proc/PID/stat``) and
RSS (``VmRSS``, and the high-water mark ``VmHWM``) are sampled every second
up to the end of the flood and every 5 s after it.

Is the load generator the bottleneck? Each flood process reports its CPU
(``os.times()``, % of one core) and the p99 lateness of a 50 ms timer in its
event loop; the main process (the probes) reports its CPU; ``/proc/stat``
gives the machine's busy cores, and what is left after the server, the flood
and the probes is other load, which takes CPU from the server (this
benchmark wants a quiet machine: ``--wait-quiet``). A generator far below a
core with a small loop lag, against a server near 100 %, means the server
sets the rate.

Printed at the end: a table (medians over ``--runs``) and one line of JSON
(``FLOOD_JSON {...}``) with the same figures and every run's.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import (  # noqa: E402
    machine_busy,
    percentile,
    proc_tree,
    rss_kb,
    stop_process,
    wait_quiet,
)
from bench.loadgen import mask_frame  # noqa: E402
from tests.servers import deployment, free_port, obtain_token, wait_for_port  # noqa: E402

HOST = "127.0.0.1"
FLOOD_SOURCE = "127.0.0.2"
BAD_TOKEN = "bad.token.value"
USERNAME, PASSWORD = "alice", "alice-demo-pass"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOOD_EVERY = 0.25  # s between two good clients
PING_EVERY = 0.2  # s between two pings of one probed session
GOOD_TIMEOUT = 60.0  # s a good client may take to be authorized before it counts as failed
ATTEMPT_TIMEOUT = 15.0  # s for one flood attempt (above the server's AUTH_TIMEOUT of 10 s)
EOF_TIMEOUT = 5.0  # s to wait for the server to drop the TCP connection after the close
LAG_TICK = 0.05  # s: the generator's event-loop lag timer
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PHASES = ("before", "flood", "after")
QUICK = {
    "existing": 20,
    "ping_sessions": 10,
    "flood_conns": 200,
    "flood_seconds": 5.0,
    "after_seconds": 10.0,
    "baseline_seconds": 2.0,
}
DEFAULTS = {
    "existing": 200,
    "ping_sessions": 50,
    "flood_conns": 2000,
    "flood_seconds": 20.0,
    "after_seconds": 60.0,
    "baseline_seconds": 5.0,
}


# --------------------------------------------------------------------------- small helpers
def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def stat_cpu_seconds(pids: list[int]) -> float:
    """``utime + stime`` of these processes (all their threads), in seconds."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def hwm_kb(pid: int) -> int:
    """Peak RSS (``VmHWM``) of one process, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def summary_ms(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (ms), ``None`` for an empty list."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


async def sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


# --------------------------------------------------------------------------- flood generator
@dataclass
class FloodConfig:
    port: int
    conns: int
    start_at: float  # epoch s, the same for every flood process
    seconds: float
    source: str


@dataclass
class FloodStats:
    """Counters of one flood process."""

    started: list[int]  # attempts started, per second of the flood
    completed: list[int]  # attempts the server ended (any outcome), per second
    outcomes: Counter[str] = field(default_factory=Counter)  # close code or what happened
    error_codes: Counter[str] = field(default_factory=Counter)  # error frames before the close
    connect_errors: Counter[str] = field(default_factory=Counter)
    durations_ms: list[float] = field(default_factory=list)  # connect -> outcome
    lags_ms: list[float] = field(default_factory=list)
    cut_at_end: int = 0
    no_eof: int = 0  # the server did not drop the TCP connection after the close

    def bucket(self, t0: float, now: float) -> int:
        return min(int(now - t0), len(self.started) - 1)


class FloodAttempt(asyncio.Protocol):
    """One connection of the flood: upgrade, bad token, close."""

    def __init__(self, request: bytes, auth: bytes, close_reply: bytes, stats: FloodStats) -> None:
        self.request, self.auth, self.close_reply, self.stats = request, auth, close_reply, stats
        loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future[str] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.errored = False  # an error frame came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded:
            self._decide("closed before 101")
        else:
            # daphne (autobahn) drops the TCP connection when the client's close reply has
            # not come back within 1 s (closeHandshakeTimeout): a close frame still
            # unread in the client's socket then goes with the reset.
            self._decide("reset after error frame" if self.errored else "1006 (no close frame)")
        if not self.gone.done():
            self.gone.set_result(None)

    def _decide(self, outcome: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")]).split(b" ")
            if len(status) < 2 or status[1] != b"101":
                self._decide("HTTP " + (status[1].decode() if len(status) > 1 else "?"))
                self.transport.close()  # type: ignore[union-attr]
                return
            del buf[: end + 4]
            self.upgraded = True
            self.transport.write(self.auth)  # type: ignore[union-attr]
        while len(buf) >= 2:
            length, header = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, header = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, header = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < header + length:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[header : header + length])
            del buf[: header + length]
            if opcode == 0x1:
                self.errored = True
                try:
                    self.stats.error_codes[json.loads(payload)["data"]["code"]] += 1
                except (ValueError, KeyError, TypeError):
                    self.stats.error_codes["(not an error frame)"] += 1
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.transport.write(self.close_reply)  # type: ignore[union-attr]
                self._decide(str(code))
            elif opcode == 0x9:
                self.transport.write(mask_frame(0xA, payload))  # type: ignore[union-attr]


async def flood_loop(cfg: FloodConfig, t0: float, end: float, stats: FloodStats) -> None:
    """One client of the flood: attempts back to back until ``end`` (monotonic)."""
    loop = asyncio.get_running_loop()
    request = (
        b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (HOST.encode(), cfg.port)
    )
    auth = mask_frame(0x1, json.dumps({"authorization": BAD_TOKEN}).encode())
    close_reply = mask_frame(0x8, b"")
    while (now := time.monotonic()) < end:
        stats.started[stats.bucket(t0, now)] += 1
        transport: asyncio.BaseTransport | None = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            async with asyncio.timeout(min(ATTEMPT_TIMEOUT, end - now)):
                sock.setblocking(False)
                # The port is chosen at connect() for the whole 4-tuple, not at bind().
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((cfg.source, 0))
                try:
                    await loop.sock_connect(sock, (HOST, cfg.port))
                except OSError as exc:
                    stats.connect_errors[errno.errorcode.get(exc.errno or 0, repr(exc))] += 1
                    sock.close()
                    await asyncio.sleep(0.01)  # no busy loop if the server is gone
                    continue
                transport, proto = await loop.create_connection(
                    lambda: FloodAttempt(request, auth, close_reply, stats), sock=sock
                )
                outcome = await proto.outcome
        except TimeoutError:
            if transport is not None:
                transport.abort()
            else:
                sock.close()
            if time.monotonic() >= end - 0.001:
                stats.cut_at_end += 1
            else:
                stats.outcomes["attempt timeout"] += 1
            continue
        done = time.monotonic()
        stats.outcomes[outcome] += 1
        stats.completed[stats.bucket(t0, done)] += 1
        stats.durations_ms.append(1000.0 * (done - now))
        try:
            async with asyncio.timeout(EOF_TIMEOUT):
                await proto.gone
        except TimeoutError:
            stats.no_eof += 1
            transport.abort()


async def lag_ticker(end: float, lags_ms: list[float]) -> None:
    at = time.monotonic()
    while at < end:
        at += LAG_TICK
        await sleep_until(at)
        lags_ms.append(1000.0 * max(0.0, time.monotonic() - at))


async def flood_main(cfg: FloodConfig) -> dict[str, Any]:
    late = time.time() - cfg.start_at  # > 0: this process started after the flood's start
    await asyncio.sleep(max(0.0, -late))
    # Start and end on the common clock, even if this process started late.
    t0 = time.monotonic() - max(0.0, late)
    end = t0 + cfg.seconds
    buckets = int(cfg.seconds) + (0 if cfg.seconds == int(cfg.seconds) else 1)
    stats = FloodStats(started=[0] * buckets, completed=[0] * buckets)
    cpu0 = own_cpu()
    ticker = asyncio.create_task(lag_ticker(end, stats.lags_ms))
    await asyncio.gather(*(flood_loop(cfg, t0, end, stats) for _ in range(cfg.conns)))
    await ticker
    elapsed, cpu = time.monotonic() - t0, own_cpu() - cpu0
    return {
        "started": stats.started,
        "completed": stats.completed,
        "outcomes": dict(stats.outcomes),
        "error_codes": dict(stats.error_codes),
        "connect_errors": dict(stats.connect_errors),
        "durations_ms": stats.durations_ms,
        "lag_p99_ms": percentile(sorted(stats.lags_ms), 0.99),
        "cut_at_end": stats.cut_at_end,
        "no_eof": stats.no_eof,
        "cpu_pct": 100.0 * cpu / elapsed,
        "elapsed": elapsed,
        "late_s": max(0.0, late),
    }


def flood_process(cfg: FloodConfig, results: Any) -> None:
    """Entry point of one flood process (``multiprocessing``, spawned)."""
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        results.put(asyncio.run(flood_main(cfg)))
    else:
        results.put(uvloop.run(flood_main(cfg)))


# --------------------------------------------------------------------------- probes
@dataclass
class Timeline:
    """Phase boundaries, monotonic s."""

    flood_start: float
    flood_end: float
    end: float

    def phase(self, at: float) -> str:
        if at < self.flood_start:
            return "before"
        return "flood" if at < self.flood_end else "after"


@dataclass
class Probes:
    auth_ms: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    open_ms: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    auth_failed: dict[str, Counter[str]] = field(
        default_factory=lambda: {p: Counter() for p in PHASES}
    )
    ping_ms: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    ping_lost: int = 0


def ws_connect(url: str) -> Any:
    return websockets.connect(
        url,
        local_addr=(HOST, 0),
        compression=None,
        ping_interval=None,  # the server pings; the library answers
        open_timeout=None,
        close_timeout=5,
        max_queue=None,
    )


async def authorize(ws: Any, token: str) -> str:
    """Send the token; return ``"authorized"`` or the error code the server answered."""
    await ws.send(json.dumps({"authorization": token}))
    while True:
        text = await ws.recv()
        if text[:1] != "{":
            continue
        reply = json.loads(text)
        if reply.get("event") == "authorized":
            return "authorized"
        if reply.get("event") == "error":
            return str(reply["data"].get("code"))


async def good_client(url: str, token: str, timeline: Timeline, probes: Probes) -> None:
    t0 = time.monotonic()
    phase = timeline.phase(t0)
    try:
        async with asyncio.timeout(GOOD_TIMEOUT), ws_connect(url) as ws:
            opened = time.monotonic()
            answer = await authorize(ws, token)
            done = time.monotonic()
            if answer != "authorized":
                probes.auth_failed[phase][answer] += 1
                return
            probes.open_ms[phase].append(1000.0 * (opened - t0))
            probes.auth_ms[phase].append(1000.0 * (done - t0))
    except TimeoutError:
        probes.auth_failed[phase]["timeout"] += 1
    except (OSError, websockets.WebSocketException) as exc:
        probes.auth_failed[phase][type(exc).__name__] += 1


async def good_clients(url: str, token: str, timeline: Timeline, probes: Probes) -> None:
    tasks = []
    at = time.monotonic()
    while at < timeline.end:
        await sleep_until(at)
        tasks.append(asyncio.create_task(good_client(url, token, timeline, probes)))
        at += GOOD_EVERY
    await asyncio.gather(*tasks)


async def pinger(ws: Any, offset: float, timeline: Timeline, probes: Probes) -> None:
    at = time.monotonic() + offset
    try:
        while at < timeline.end:
            await sleep_until(at)
            t0 = time.monotonic()
            await ws.send("ping")
            while await ws.recv() != "pong":
                pass
            probes.ping_ms[timeline.phase(t0)].append(1000.0 * (time.monotonic() - t0))
            at = max(at + PING_EVERY, time.monotonic())
    except websockets.ConnectionClosed:
        probes.ping_lost += 1


async def open_existing(url: str, token: str, count: int) -> list[Any]:
    gate = asyncio.Semaphore(50)

    async def one() -> Any:
        async with gate:
            ws = await ws_connect(url)
            answer = await authorize(ws, token)
            if answer != "authorized":
                raise SystemExit(f"an existing session was refused: {answer}")
            return ws

    return list(await asyncio.gather(*(one() for _ in range(count))))


@dataclass
class Sample:
    phase: str
    at: float  # s from the start of the flood
    cpu_pct: float  # since the previous sample
    rss_mb: float


async def sampler(pids: list[int], timeline: Timeline, samples: list[Sample]) -> None:
    """Server CPU and RSS: every second until the flood ends, then every 5 s."""
    last_t, last_cpu = time.monotonic(), stat_cpu_seconds(pids)
    at = last_t
    while at < timeline.end - 0.01:
        at += 1.0 if at < timeline.flood_end - 0.01 else 5.0
        await sleep_until(at)
        now, cpu = time.monotonic(), stat_cpu_seconds(pids)
        samples.append(
            Sample(
                timeline.phase(at - 0.001),
                now - timeline.flood_start,
                100.0 * (cpu - last_cpu) / (now - last_t),
                rss_kb(pids) / 1024,
            )
        )
        last_t, last_cpu = now, cpu


# --------------------------------------------------------------------------- one run
@dataclass
class Options:
    server: str
    existing: int
    ping_sessions: int
    flood_conns: int
    flood_seconds: float
    flood_procs: int
    after_seconds: float
    baseline_seconds: float
    source: str
    redis: str | None


def server_env(base: dict[str, str], opts: Options) -> dict[str, str]:
    env = dict(base)
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        # The existing sessions and the good clients are all alice's.
        BROKER_WS_JSON=json.dumps({"MAX_SESSIONS_PER_LOGIN": opts.existing + 1000}),
    )
    if opts.redis:
        env["REDIS_URL"] = opts.redis
    return env


async def drive(opts: Options, port: int, pid: int, token: str) -> dict[str, Any]:
    url = f"ws://{HOST}:{port}/"
    pids = proc_tree(pid)
    existing = await open_existing(url, token, opts.existing)
    await asyncio.sleep(1.0)  # let the connect burst settle

    lead = opts.baseline_seconds + 1.5  # the flood processes need ~1 s to start
    start_at = time.time() + lead
    flood_start = time.monotonic() + lead
    flood_end = flood_start + opts.flood_seconds
    timeline = Timeline(flood_start, flood_end, flood_end + opts.after_seconds)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    share, extra = divmod(opts.flood_conns, opts.flood_procs)
    workers = [
        ctx.Process(
            target=flood_process,
            args=(
                FloodConfig(port, share + (i < extra), start_at, opts.flood_seconds, opts.source),
                results,
            ),
            daemon=True,
        )
        for i in range(opts.flood_procs)
    ]
    for worker in workers:
        worker.start()

    probes = Probes()
    samples: list[Sample] = []
    probe_tasks = [
        asyncio.create_task(good_clients(url, token, timeline, probes)),
        asyncio.create_task(sampler(pids, timeline, samples)),
    ]
    probe_tasks += [
        asyncio.create_task(pinger(ws, i * PING_EVERY / opts.ping_sessions, timeline, probes))
        for i, ws in enumerate(existing[: opts.ping_sessions])
    ]

    await sleep_until(timeline.flood_start)
    rss_before = rss_kb(pids) / 1024
    busy0, cpu0, server0 = machine_busy()[0], own_cpu(), stat_cpu_seconds(pids)
    await sleep_until(timeline.flood_end)
    busy1, cpu1, server1 = machine_busy()[0], own_cpu(), stat_cpu_seconds(pids)
    flood = [await asyncio.to_thread(results.get, True, 60.0) for _ in workers]
    # Other load: the machine's busy time minus the server, the flood and the probes.
    generator = sum(f["cpu_pct"] for f in flood) / 100 * opts.flood_seconds
    other = (busy1 - busy0) - (server1 - server0) - generator - (cpu1 - cpu0)
    for worker in workers:
        await asyncio.to_thread(worker.join, 10.0)
    await asyncio.gather(*probe_tasks)
    hwm = hwm_kb(pid) / 1024
    lost = sum(ws.close_code is not None for ws in existing)
    await asyncio.gather(*(ws.close() for ws in existing), return_exceptions=True)
    return figures(opts, probes, samples, flood, rss_before, hwm, lost, {
        "machine_busy_cores": (busy1 - busy0) / opts.flood_seconds,
        "other_load_cores": max(0.0, other) / opts.flood_seconds,
        "prober_cpu_pct": 100.0 * (cpu1 - cpu0) / opts.flood_seconds,
    })  # fmt: skip


def figures(
    opts: Options,
    probes: Probes,
    samples: list[Sample],
    flood: list[dict[str, Any]],
    rss_before: float,
    hwm: float,
    lost: int,
    extra: dict[str, float],
) -> dict[str, Any]:
    """The run's figures: a flat dict of numbers, plus a few counters and series."""
    out: dict[str, Any] = {}
    for phase in PHASES:
        for key, value in summary_ms(probes.auth_ms[phase]).items():
            out[f"good_{phase}_{key}"] = value
        out[f"good_{phase}_open_p50"] = summary_ms(probes.open_ms[phase])["p50"]
        out[f"good_{phase}_ok"] = len(probes.auth_ms[phase])
        out[f"good_{phase}_failed"] = sum(probes.auth_failed[phase].values())
        for key, value in summary_ms(probes.ping_ms[phase]).items():
            out[f"ping_{phase}_{key}"] = value
        out[f"ping_{phase}_n"] = len(probes.ping_ms[phase])
        cpu = [s.cpu_pct for s in samples if s.phase == phase]
        out[f"cpu_{phase}_mean"] = statistics.fmean(cpu) if cpu else None
        out[f"cpu_{phase}_max"] = max(cpu) if cpu else None
    after = [s for s in samples if s.phase == "after"]
    out["rss_before_mb"] = rss_before
    out["rss_peak_mb"] = max([rss_before] + [s.rss_mb for s in samples if s.phase != "before"])
    out["rss_hwm_mb"] = hwm  # VmHWM: the server's peak RSS since it started
    out["rss_after_mb"] = after[-1].rss_mb if after else None
    started = [sum(col) for col in zip(*(f["started"] for f in flood), strict=True)]
    completed = [sum(col) for col in zip(*(f["completed"] for f in flood), strict=True)]
    out["flood_started"] = sum(started)
    out["flood_completed"] = sum(completed)
    out["flood_rate"] = sum(completed) / opts.flood_seconds
    full = completed[: int(opts.flood_seconds)] or completed  # whole seconds only
    out["flood_rate_sec_min"] = min(full)
    out["flood_rate_sec_median"] = statistics.median(full)
    out["flood_rate_sec_max"] = max(full)
    durations = sorted(d for f in flood for d in f["durations_ms"])
    out["attempt_p50_ms"] = percentile(durations, 0.50)
    out["attempt_p99_ms"] = percentile(durations, 0.99)
    out["flood_cut_at_end"] = sum(f["cut_at_end"] for f in flood)
    out["flood_no_eof"] = sum(f["no_eof"] for f in flood)
    out["flood_connect_errors"] = sum(sum(f["connect_errors"].values()) for f in flood)
    out["gen_cpu_pct_max"] = max(f["cpu_pct"] for f in flood)
    out["gen_cpu_pct_sum"] = sum(f["cpu_pct"] for f in flood)
    out["gen_lag_p99_ms"] = max(f["lag_p99_ms"] or 0.0 for f in flood)
    out["gen_late_s"] = max(f["late_s"] for f in flood)  # a flood process started late
    out["existing_lost"] = lost
    out["ping_sessions_lost"] = probes.ping_lost
    out.update(extra)

    def merged(key: str) -> dict[str, int]:
        total: Counter[str] = Counter()
        for f in flood:
            total.update(f[key])
        return dict(total)

    out["close_codes"] = merged("outcomes")
    out["error_codes"] = merged("error_codes")
    out["connect_errors"] = merged("connect_errors")
    out["good_failures"] = {p: dict(probes.auth_failed[p]) for p in PHASES}
    out["series"] = {
        "completed_per_s": completed,
        "cpu_pct": [round(s.cpu_pct) for s in samples if s.phase == "flood"],
        "rss_mb_after": [round(s.rss_mb, 1) for s in after],
    }
    return out


def run_once(opts: Options, number: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bws-flood-") as tmp,
        deployment("embedded", Path(tmp)) as dep,
    ):
        port = free_port()
        out_log, err_log = Path(tmp) / "server.out", Path(tmp) / "server.err"
        cmd = [sys.executable, "manage.py", "rundemo", "--no-feed", "--port", str(port)]
        cmd += ["--host", HOST, "--server", opts.server]
        with out_log.open("w") as out, err_log.open("w") as err:
            server = subprocess.Popen(
                cmd, cwd=ROOT, env=server_env(dep.env, opts), stdout=out, stderr=err,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_for_port(port, server)
            token = obtain_token(f"{HOST}:{port}", USERNAME, PASSWORD)["access"]
            print(
                f"run {number}: {opts.server} pid {server.pid} on port {port}; "
                f"{opts.existing} sessions, then {opts.baseline_seconds:g} s before, "
                f"{opts.flood_seconds:g} s flood, {opts.after_seconds:g} s after",
                flush=True,
            )
            result = asyncio.run(drive(opts, port, server.pid, token))
            result["server_alive"] = server.poll() is None
        finally:
            stop_process(server)
        log = err_log.read_text(errors="replace")
        result["server_tracebacks"] = log.count("Traceback")
        return result


# --------------------------------------------------------------------------- report
def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the runs; counters summed."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, bool):
            out[key] = all(r[key] for r in runs)
        elif isinstance(value, int | float) or value is None:
            values = [r[key] for r in runs if r[key] is not None]
            out[key] = statistics.median(values) if values else None
        elif key in ("close_codes", "error_codes", "connect_errors"):
            total: Counter[str] = Counter()
            for r in runs:
                total.update(r[key])
            out[key] = dict(total)
    return out


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def report(opts: Options, runs: list[dict[str, Any]]) -> str:
    m = median_figures(runs)
    title = f"median of {len(runs)} runs" if len(runs) > 1 else "1 run"
    lines = [
        "",
        f"bad-token flood against {opts.server} ({title}): {opts.flood_conns} client loops "
        f"from {opts.source} for {opts.flood_seconds:g} s; {opts.existing} existing sessions "
        f"({opts.ping_sessions} pinging every {PING_EVERY * 1000:.0f} ms), a good client "
        f"every {GOOD_EVERY * 1000:.0f} ms, from {HOST}",
        "",
        f"{'':34}{'before':>10}{'flood':>10}{'after':>10}",
    ]

    def row(label: str, key: str, spec: str = ".0f") -> None:
        cells = "".join(f"{fmt(m[key.format(p)], spec):>10}" for p in PHASES)
        lines.append(f"{label:34}{cells}")

    row("good client authorize p50 ms", "good_{}_p50", ".1f")
    row("                      p99 ms", "good_{}_p99", ".1f")
    row("                      max ms", "good_{}_max", ".1f")
    row("  of which connect->101 p50 ms", "good_{}_open_p50", ".1f")
    row("  authorized", "good_{}_ok")
    row("  failed", "good_{}_failed")
    row("ping->pong p50 ms", "ping_{}_p50", ".1f")
    row("           p99 ms", "ping_{}_p99", ".1f")
    row("           max ms", "ping_{}_max", ".1f")
    row("server CPU % of a core, mean", "cpu_{}_mean")
    row("                        max sample", "cpu_{}_max")
    lines += [
        "",
        f"server RSS MB: before the flood {fmt(m['rss_before_mb'], '.1f')}, peak "
        f"{fmt(m['rss_peak_mb'], '.1f')} (VmHWM {fmt(m['rss_hwm_mb'], '.1f')}), "
        f"{opts.after_seconds:g} s after the flood {fmt(m['rss_after_mb'], '.1f')}",
        f"flood: {fmt(m['flood_rate'])} attempts/s completed (per second min "
        f"{fmt(m['flood_rate_sec_min'])} / median {fmt(m['flood_rate_sec_median'])} / max "
        f"{fmt(m['flood_rate_sec_max'])}); {fmt(m['flood_started'])} started, "
        f"{fmt(m['flood_completed'])} ended by the server, {fmt(m['flood_cut_at_end'])} cut at "
        f"the end; attempt connect->end p50 {fmt(m['attempt_p50_ms'])} ms, p99 "
        f"{fmt(m['attempt_p99_ms'])} ms",
        f"  outcomes {m['close_codes']}; error frames {m['error_codes']}; connect errors "
        f"{m['connect_errors'] or 0}; no TCP close after the close frame "
        f"{fmt(m['flood_no_eof'])}",
        f"generator: {opts.flood_procs} processes, busiest {fmt(m['gen_cpu_pct_max'])} % of a "
        f"core (all {fmt(m['gen_cpu_pct_sum'])} %), event-loop lag p99 "
        f"{fmt(m['gen_lag_p99_ms'], '.1f')} ms; probes {fmt(m['prober_cpu_pct'])} %; machine "
        f"{fmt(m['machine_busy_cores'], '.2f')} of {os.cpu_count()} cores busy during the flood, "
        f"{fmt(m['other_load_cores'], '.2f')} of them other load (not server, flood, probes)"
        + (f"; a flood process started {m['gen_late_s']:.2f} s late" if m["gen_late_s"] else ""),
        f"existing sessions lost {fmt(m['existing_lost'])}; server tracebacks "
        f"{fmt(m['server_tracebacks'])}; server alive at the end {m['server_alive']}",
    ]
    last = runs[-1]["series"]
    lines.append(
        f"last run, per flood second: attempts {last['completed_per_s']}, server CPU % "
        f"{last['cpu_pct']}; RSS MB after, every 5 s {last['rss_mb_after']}"
    )
    if len(runs) > 1:
        for i, r in enumerate(runs, 1):
            lines.append(
                f"  run {i}: {r['flood_rate']:.0f} attempts/s, good p50/p99 "
                f"{fmt(r['good_flood_p50'])}/{fmt(r['good_flood_p99'])} ms, ping p99 "
                f"{fmt(r['ping_flood_p99'])} ms, CPU {fmt(r['cpu_flood_mean'])} %, RSS "
                f"{fmt(r['rss_before_mb'])}->{fmt(r['rss_peak_mb'])}->{fmt(r['rss_after_mb'])} MB"
            )
    return "\n".join(lines)


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


# --------------------------------------------------------------------------- main
def parse_options(argv: list[str] | None = None) -> tuple[Options, int, float]:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--flood-conns", type=int, help="concurrent flood loops (2000)")
    parser.add_argument("--flood-seconds", type=float, help="flood duration (20)")
    parser.add_argument("--flood-procs", type=int, default=2, help="flood processes (2)")
    parser.add_argument("--existing", type=int, help="authorized sessions of alice (200)")
    parser.add_argument("--ping-sessions", type=int, help="existing sessions that ping (50)")
    parser.add_argument("--after-seconds", type=float, help="watched after the flood (60)")
    parser.add_argument("--baseline-seconds", type=float, help="probes before the flood (5)")
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--runs", type=int, default=1, help="repeat, report medians (1)")
    parser.add_argument("--source", default=FLOOD_SOURCE, help="flood source address")
    parser.add_argument("--redis", metavar="URL", help="REDIS_URL for the server (default none)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        metavar="S",
        help="before each run wait up to S s for other load under 0.3 cores (30; 0: no wait)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: " + ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in QUICK.items()),
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return base[name] if value is None else value

    opts = Options(
        server=args.server,
        existing=pick("existing"),
        ping_sessions=min(pick("ping_sessions"), pick("existing")),
        flood_conns=pick("flood_conns"),
        flood_seconds=pick("flood_seconds"),
        flood_procs=max(1, min(args.flood_procs, pick("flood_conns"))),
        after_seconds=pick("after_seconds"),
        baseline_seconds=pick("baseline_seconds"),
        source=args.source,
        redis=args.redis,
    )
    if opts.flood_seconds < 1 or opts.existing < 1 or opts.ping_sessions < 1:
        parser.error("--flood-seconds must be at least 1, --existing and --ping-sessions 1")
    return opts, args.runs, args.wait_quiet


def main() -> None:
    opts, runs, quiet_s = parse_options()
    limit = raise_fd_limit()  # inherited by the server and the flood processes
    needed = opts.flood_conns + opts.existing + 500
    if limit < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {limit} < {needed} needed")
    results = []
    for number in range(1, runs + 1):
        if quiet_s > 0:
            load = wait_quiet(quiet_s)
            print(f"run {number}: other load {load:.2f} cores before it starts", flush=True)
        results.append(run_once(opts, number))
    print(report(opts, results))
    summary = {"options": vars(opts), "median": median_figures(results), "runs": results}
    print("FLOOD_JSON " + json.dumps(rounded(summary), separators=(",", ":")))


if __name__ == "__main__":
    main()
