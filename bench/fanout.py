"""Fan-out benchmark of broker_ws against naive and plain baselines.

In one run, for each scenario and each server: start the server as a real
subprocess on a free port, connect every session with the raw-socket load
generator (``bench/loadgen.py``), measure idle memory, publish from a
separate process for a warm-up plus a measurement window, drain, stop the
server, and print one table per scenario. See bench/README.md for what each
column means.

The scaling scenario (``--scenario s``, not part of the default set) asks
another question: what quote rate do 1 and 2 server processes carry at the
same p99? It keeps one set of sessions and one publisher per server count
and steps the rate up (see ``measure_scaling``).

    .venv/bin/python bench/fanout.py [--scenario a,b,c] [--servers broker_ws,naive,...]
                                     [--runs N] [--duration 10] [--json out.json]
    .venv/bin/python bench/fanout.py --scenario s [--servers broker_ws,broker_ws_uvicorn]
                                     [--s-sessions 1000] [--s-p99-ms 150]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import hashlib
import json
import math
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402

PY = sys.executable
VENV_BIN = Path(PY).parent
SERVERS = ["broker_ws", "broker_ws_uvicorn", "naive", "plain"]
LOGIN_BASE = 700000
CLK_TCK = os.sysconf("SC_CLK_TCK")
HAS_SCHEDSTAT = os.path.exists("/proc/self/schedstat")
LOADGEN_LIMIT = 60.0  # % of one core: above it the load generator is split in two
IDLE_S = 2.0  # server CPU with every session ready and nothing published, measured this long
# Scenario s: the servers it applies to (several processes behind one Redis).
# plain is the control: N copies of it, each with its own Redis subscription,
# show what the machine itself lets any server gain from a second process.
# naive is left out (it cannot carry scenario (a)'s rate with one process).
SCALING_SERVERS = ["broker_ws", "broker_ws_uvicorn", "plain"]
SCALING_COUNTS = (1, 2)  # server processes
SCALING_SYMBOL = "BENCH-S"
SCALING_MAX_DOWN = 3  # steps below --s-start-rate when the start rate does not hold


# --------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    name: str
    title: str
    kind: str  # quotes | saves
    rate: float
    symbols: list[str]
    sessions: list[tuple[int, list[str]]]  # (bench user index, symbols)


def build_scenario(name: str, args: argparse.Namespace) -> Scenario:
    users = args.users
    if name == "a":
        n = args.a_sessions
        sym = "BENCH-A"
        return Scenario(
            "a",
            f"(a) {n} sessions on one symbol, {args.a_rate:g} quotes/s",
            "quotes",
            args.a_rate,
            [sym],
            [(i % users, [sym]) for i in range(n)],
        )
    if name == "b":
        nsym, per_symbol, per_session = 100, 20, args.b_per_session
        symbols = [f"BENCH-{k:03d}" for k in range(nsym)]
        n = nsym * per_symbol // per_session
        sessions = [
            (j % users, [symbols[(j * per_session + m) % nsym] for m in range(per_session)])
            for j in range(n)
        ]
        return Scenario(
            "b",
            f"(b) {nsym} symbols x {per_symbol} sessions each ({n} sessions, "
            f"{per_session} symbol(s) per session), {args.b_rate:g} quotes/s in total",
            "quotes",
            args.b_rate,
            symbols,
            sessions,
        )
    if name == "s":
        n = args.s_sessions
        return Scenario(
            "s",
            f"(s) scaling: {n} sessions on one symbol, split evenly over 1 or 2 server "
            f"processes; carried = the highest quote rate with 100 % delivered, no session lost "
            f"and p99 <= {args.s_p99_ms:g} ms",
            "quotes",
            args.s_start_rate,
            [SCALING_SYMBOL],
            [(i % users, [SCALING_SYMBOL]) for i in range(n)],
        )
    if name == "c":
        n = users * 2
        return Scenario(
            "c",
            f"(c) {users} logins x 2 sessions ({n} sessions), {args.c_rate:g} balance saves/s "
            "committed by another process; latency = save start -> frame",
            "saves",
            args.c_rate,
            [],
            [(i % users, []) for i in range(n)],
        )
    raise SystemExit(f"unknown scenario {name!r}")


# --------------------------------------------------------------------------- /proc helpers
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def proc_tree(pid: int) -> list[int]:
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes (all their threads), in seconds.

    From each thread's ``schedstat`` (nanoseconds on the CPU, as the
    scheduler accounts it), not ``utime + stime`` of ``stat`` (clock ticks of
    10 ms, sampled): at the 2-5 % of a core a server spends in scenario (c),
    a 10 s window holds only 20-50 ticks. Falls back to ``stat`` on a kernel
    without ``schedstat`` (no CONFIG_SCHEDSTATS). A process or thread that
    ends meanwhile counts nothing.
    """
    if not HAS_SCHEDSTAT:
        return sum(_stat_cpu_seconds(pid) for pid in pids)
    total = 0.0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0]) / 1e9
            except OSError:
                continue
    return total


def _stat_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) of all CPUs, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def spawn(cmd: list[str], err: Path, **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``cmd`` in its own process group, its stderr to the file ``err``."""
    with open(err, "w") as fh:
        return subprocess.Popen(cmd, stderr=fh, start_new_session=True, **kwargs)


def wait_quiet(limit_s: float, threshold: float = 0.3) -> float:
    """Wait (at most ``limit_s``) until the machine's other load is under ``threshold`` cores.

    Called between measurements, when none of the benchmark's processes run.
    Returns the last load seen (cores).
    """
    deadline = time.time() + limit_s
    while True:
        b0, _ = machine_busy()
        time.sleep(1.0)
        b1, _ = machine_busy()
        load = b1 - b0
        if load < threshold or time.time() >= deadline:
            return load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 8.0) -> None:
    """SIGTERM the process group we started (start_new_session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def redis_call(url: str, *command: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5).execute_command(*command)


def redis_pid(url: str) -> int | None:
    try:
        info = redis_call(url, "INFO", "server")
        if isinstance(info, bytes):
            info = info.decode()
        if isinstance(info, str):
            for line in info.splitlines():
                if line.startswith("process_id:"):
                    return int(line.split(":")[1])
        elif isinstance(info, dict):
            return int(info.get("process_id"))
    except Exception:
        return None
    return None


def percentile(sorted_values: array.array | list[float], q: float) -> float | None:
    if not len(sorted_values):
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --------------------------------------------------------------------------- one measurement
@dataclass
class Env:
    args: argparse.Namespace
    tmp: Path
    redis_url: str
    template: Path | None = None
    redis_pid: int | None = None


def django_env(env: Env, db: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "REDIS_URL": env.redis_url,
            "DATABASE_URL": f"sqlite:///{db}",
            "DJANGO_DEBUG": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return e


def server_command(server: str, port: int, env: Env) -> tuple[list[str], str]:
    """The command and a note on its listen backlog."""
    if server == "broker_ws":
        return [
            PY,
            "manage.py",
            "rundemo",
            "--no-feed",
            "--port",
            str(port),
        ], "daphne, backlog 4096"
    if server == "broker_ws_uvicorn":
        return [
            PY, "-m", "uvicorn", "project.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--backlog", "4096",
            "--ws-per-message-deflate", "false", "--lifespan", "off",
            "--log-level", "warning", "--no-access-log",
        ], "uvicorn, backlog 4096, deflate off"  # fmt: skip
    if server == "naive":
        daphne = str(VENV_BIN / "daphne")
        return [daphne, "-b", "127.0.0.1", "-p", str(port), "bench.naive.asgi:application"], (
            "daphne defaults, backlog 50"
        )
    if server == "plain":
        return [
            PY, str(BENCH / "plain_server.py"), "--port", str(port), "--redis", env.redis_url,
            "--backlog", "4096",
        ], "websockets, backlog 4096, deflate off"  # fmt: skip
    raise SystemExit(f"unknown server {server!r}")


class LineReader:
    """Lines of a child's stdout, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.q.put(line.rstrip("\n"))
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def expect(self, prefix: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.time() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                return None
            if line is None:
                return None
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1 :])
            if time.time() > deadline:
                return None


def log_issues(path: Path, start: int, end: int | None) -> dict[str, Any]:
    """Tracebacks, errors and warnings in bytes [start, end) of a server log."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read() if end is None else fh.read(end - start)
    except OSError:
        return {}
    text = data.decode(errors="replace")
    lines = text.splitlines()
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    excerpt = ""
    if tracebacks:
        i = tracebacks[0]
        excerpt = "\n".join(lines[max(0, i - 2) : i + 25])
    return {
        "tracebacks": len(tracebacks),
        "errors": sum(1 for line in lines if " ERROR " in line or line.startswith("ERROR")),
        "warnings": sum(1 for line in lines if " WARNING " in line),
        "closing": sum(1 for line in lines if "closing session" in line),
        "excerpt": excerpt,
        "tail": "\n".join(lines[-15:]),
    }


async def _warm(port: int, sessions: list[dict[str, Any]]) -> dict[str, Any]:
    gen = loadgen.LoadGen(
        {
            "host": "127.0.0.1",
            "port": port,
            "sessions": sessions,
            "concurrency": 10,
            "lat_path": os.devnull,
            "connect_timeout": 20,
        }  # fmt: skip
    )
    result = await gen.connect_all()
    for s in gen.sessions:
        if s.transport is not None:
            s.closed = True
            s.transport.close()
    await asyncio.sleep(0.3)
    return result


def window_figures(
    run_dir: Path, nprocs: int, reports: list[Any], server_cpu_s: float
) -> dict[str, Any]:
    """Latency percentiles of the window (from the load generators' ``lat<k>.bin``
    files), frames received in it, and server CPU per received frame."""
    lat = array.array("d")
    for k in range(nprocs):
        with open(run_dir / f"lat{k}.bin", "rb") as fh:
            lat.frombytes(fh.read())
    values = sorted(lat)
    arrivals = sum(r["arrivals_in_window"] for r in reports)
    return {
        "p50_ms": percentile(values, 0.50),
        "p99_ms": percentile(values, 0.99),
        "max_ms": values[-1] if values else None,
        "arrivals_in_window": arrivals,
        "cpu_per_frame_us": server_cpu_s / arrivals * 1e6 if arrivals else None,
    }


def start_loadgens(
    sc: Scenario,
    auths: Any,
    nprocs: int,
    concurrency: int,
    run_dir: Path,
    target: dict[str, Any],
) -> tuple[list[subprocess.Popen[Any]], list[LineReader]]:
    """Start ``nprocs`` load generator processes sharing the scenario's sessions
    (round-robin) and connecting to ``target`` (``port`` or ``ports``, and options)."""
    start_at = time.time() + 1.0
    loadgens: list[subprocess.Popen[Any]] = []
    readers: list[LineReader] = []
    for k in range(nprocs):
        part = sc.sessions[k::nprocs]
        cfg = {
            "host": "127.0.0.1",
            **target,
            "sessions": [{"auth": auths[u], "symbols": syms} for u, syms in part],
            "concurrency": max(1, concurrency // nprocs),
            "lat_path": str(run_dir / f"lat{k}.bin"),
            "start_at": start_at,
            "connect_timeout": 90,
        }
        cfg_path = run_dir / f"loadgen{k}.json"
        cfg_path.write_text(json.dumps(cfg))
        p = spawn(
            [PY, str(BENCH / "loadgen.py"), str(cfg_path)], run_dir / f"loadgen{k}.err",
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        loadgens.append(p)
        readers.append(LineReader(p))
    return loadgens, readers


def session_auths(server: str, users: int, run_dir: Path, proc_env: dict[str, str]) -> list[str]:
    """What each bench user's sessions authorize with: a JWT minted for this server run
    for broker_ws, the login itself for the baselines (they trust it)."""
    if not server.startswith("broker_ws"):
        return [str(LOGIN_BASE + i) for i in range(users)]
    tokens_path = run_dir / "tokens.json"
    subprocess.run(
        [PY, str(BENCH / "bw_setup.py"), "tokens", "--users", str(users),
         "--out", str(tokens_path)],
        cwd=ROOT, env=proc_env, check=True,
    )  # fmt: skip
    return [row["token"] for row in json.loads(tokens_path.read_text())]


def measure(server: str, sc: Scenario, env: Env, run_dir: Path, nprocs: int = 1) -> dict[str, Any]:
    args = env.args
    run_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"server": server, "scenario": sc.name, "ok": False}
    result["loadavg_before"] = Path("/proc/loadavg").read_text().split()[:3]
    redis_call(env.redis_url, "FLUSHDB")
    port = free_port()
    db = run_dir / "db.sqlite3"
    if env.template is not None:
        shutil.copyfile(env.template, db)
    proc_env = django_env(env, db)

    auths = session_auths(server, args.users, run_dir, proc_env)

    cmd, backlog_note = server_command(server, port, env)
    if args.gc_log:
        if cmd[0] == PY:
            cmd = [PY, str(BENCH / "gcwatch.py"), *cmd[1:]]
        else:  # the daphne console script
            cmd = [PY, str(BENCH / "gcwatch.py"), *cmd]
    result["backlog"] = backlog_note
    server_log = run_dir / "server.log"
    procs: list[subprocess.Popen[Any]] = []
    srv = None
    log_mark: int | None = None
    try:
        with open(server_log, "w") as log:
            srv = subprocess.Popen(
                cmd, cwd=ROOT, env=proc_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        if not wait_port(port, srv, 60):
            result["error"] = "server did not start"
            return result
        # One warm-up session (auth + subscribe to another symbol), so lazy
        # set-up (hub, Redis pools, DB thread) is not counted as session memory.
        warm = asyncio.run(_warm(port, [{"auth": auths[0], "symbols": ["BENCH-WARMUP"]}]))
        if warm["ready"] != 1:
            result["error"] = f"warm-up session failed: {warm['failures']}"
            return result
        time.sleep(0.5)
        tree = proc_tree(srv.pid)
        rss_before = rss_kb(tree)

        # Load generators.
        nproc = nprocs
        spy_connect = None
        if args.profile:
            spy_connect = spawn(
                [str(VENV_BIN / "py-spy"), "record", "--nonblocking", "--subprocesses",
                 "--rate", "100", "--format", "raw", "--pid", str(srv.pid),
                 "--output", str(run_dir / "profile-connect.txt")],
                run_dir / "py-spy-connect.err", stdout=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(spy_connect)
            time.sleep(0.5)
        loadgens, readers = start_loadgens(
            sc, auths, nproc, args.concurrency, run_dir, {"port": port}
        )
        procs.extend(loadgens)
        readies = [r.expect("READY", 200) for r in readers]
        if any(r is None for r in readies):
            result["error"] = "load generator did not report READY"
            return result
        if spy_connect is not None:
            spy_connect.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_connect.wait(20)
            result["profile_connect"] = summarize_profile(run_dir / "profile-connect.txt")
        ready = sum(r["ready"] for r in readies)  # type: ignore[index]
        failures: dict[str, int] = {}
        for r in readies:
            for k2, v in r["failures"].items():  # type: ignore[index]
                failures[k2] = failures.get(k2, 0) + v
        result["sessions"] = len(sc.sessions)
        result["ready"] = ready
        result["connect_failed"] = len(sc.sessions) - ready
        result["connect_failures"] = failures
        result["connect_s"] = max(r["done"] for r in readies) - min(r["started"] for r in readies)  # type: ignore[index]
        result["loadgen_connect_cpu_s"] = max(r["cpu_connect_s"] for r in readies)  # type: ignore[index]
        # The publisher starts now (its imports and Django set-up overlap the
        # idle second below) and waits for GO.
        pub_cmd = [
            PY, str(BENCH / "publisher.py"), "--server", server, "--kind", sc.kind,
            "--rate", str(sc.rate), "--redis", env.redis_url, "--logins", str(args.users),
            "--symbols", ",".join(sc.symbols),
        ]  # fmt: skip
        pub = spawn(
            pub_cmd, run_dir / "publisher.err", cwd=ROOT, env=proc_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(pub)
        pub_reader = LineReader(pub)
        # Idle: sessions connected and subscribed, nothing published.
        time.sleep(0.5)
        tree = proc_tree(srv.pid)
        idle0, idle_t0 = cpu_seconds(tree), time.time()
        time.sleep(IDLE_S)
        result["idle_cpu_pct"] = 100 * (cpu_seconds(tree) - idle0) / (time.time() - idle_t0)
        rss_after = rss_kb(tree)
        result["rss_before_kb"] = rss_before
        result["rss_after_kb"] = rss_after
        result["rss_per_session_kb"] = (rss_after - rss_before) / ready if ready else None
        if pub_reader.expect("PUBREADY", 60) is None:
            result["error"] = "publisher did not start (see publisher.err)"
            return result

        # Warm-up, then the measurement window.
        t_start = time.time() + 0.2
        t0 = t_start + args.warmup
        t1 = t0 + args.duration
        assert pub.stdin is not None
        pub.stdin.write(f"GO {t_start!r} {t0!r} {t1!r} {t1 + 0.05!r}\n")
        pub.stdin.flush()
        for p in loadgens:
            assert p.stdin is not None
            p.stdin.write(f"WINDOW {t0!r} {t1!r}\n")
            p.stdin.flush()
        watched = {
            "server": proc_tree(srv.pid),
            "loadgen": [p.pid for p in loadgens],
            "publisher": [pub.pid],
            "redis": [env.redis_pid] if env.redis_pid else [],
        }

        def sample() -> dict[str, float]:
            s = {name: cpu_seconds(pids) for name, pids in watched.items()}
            s["machine"] = machine_busy()[0]
            s["wall"] = time.time()
            return s

        time.sleep(max(0.0, t0 - time.time()))
        c0 = sample()
        spy = None
        if args.profile:
            # Sampled in parallel without pausing the server (--nonblocking).
            spy = spawn(
                [str(VENV_BIN / "py-spy"), "record", "--nonblocking", "--subprocesses",
                 "--rate", str(args.profile_rate), "--format", "raw",
                 "--duration", str(int(args.duration)),
                 *(["--gil"] if args.profile_gil else []),
                 "--pid", str(srv.pid), "--output", str(run_dir / "profile.txt")],
                run_dir / "py-spy.err", stdout=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(spy)
        time.sleep(max(0.0, t1 - time.time()))
        c1 = sample()
        wall = c1["wall"] - c0["wall"]
        cpu = {k: c1[k] - c0[k] for k in c0 if k != "wall"}
        result["window_s"] = wall
        result["server_cpu_s"] = cpu["server"]
        result["server_cpu_pct"] = 100 * cpu["server"] / wall
        result["cpu_share"] = {k: v / wall for k, v in cpu.items()}  # cores
        result["other_cores"] = max(
            0.0,
            (cpu["machine"] - cpu["server"] - cpu["loadgen"] - cpu["publisher"] - cpu["redis"])
            / wall,
        )

        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(20)
            result["profile"] = summarize_profile(run_dir / "profile.txt")
        pub_result = pub_reader.expect("RESULT", args.duration + 60)
        if pub_result is None:
            result["error"] = "publisher did not report (see publisher.err)"
            return result
        result["publisher"] = {k: v for k, v in pub_result.items() if k not in ("window", "total")}
        deadline = time.time() + args.drain
        for p in loadgens:
            assert p.stdin is not None
            p.stdin.write(f"STOP {deadline!r}\n")
            p.stdin.flush()
        lg = [r.expect("RESULT", args.drain + 30) for r in readers]
        if any(r is None for r in lg):
            result["error"] = "load generator did not report RESULT"
            return result
        log_mark = server_log.stat().st_size  # what the server logged before the sessions close
        for p in loadgens:
            with contextlib.suppress(OSError):
                p.stdin.write("BYE\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
        rss_end = rss_kb(proc_tree(srv.pid))
        if args.gc_log:
            pauses = [
                (float(f[1]), int(f[2]), float(f[3]))
                for f in (
                    line.split() for line in server_log.read_text(errors="replace").splitlines()
                )
                if f[:1] == ["GCPAUSE"]
            ]
            in_window = [p for p in pauses if t0 <= p[0] < t1]
            result["gc_pauses"] = {
                "window": len(in_window),
                "max_ms": max((p[2] for p in in_window), default=0.0),
                "at": [(round(p[0] - t0, 2), p[1], p[2]) for p in in_window][:20],
                "total": len(pauses),
            }
        result["rss_end_kb"] = rss_end

        # ---- metrics
        result.update(window_figures(run_dir, nproc, lg, cpu["server"]))
        # What the frames cost on top of what the server spends with nothing to
        # send (timers, pings, polls): at (c)'s 100 frames/s the idle cost is a
        # large part of CPU/frame, and each server's own share of it shows here.
        arrivals = result["arrivals_in_window"]
        idle_s = result["idle_cpu_pct"] / 100 * wall
        result["cpu_per_frame_above_idle_us"] = (
            (cpu["server"] - idle_s) / arrivals * 1e6 if arrivals else None
        )
        if sc.kind == "quotes":
            subscribers: dict[str, int] = {}
            delivered = 0
            for r in lg:
                for sym, n in r["subscribers"].items():  # type: ignore[index]
                    subscribers[sym] = subscribers.get(sym, 0) + n
                delivered += sum(r["by_symbol"].values())  # type: ignore[index]
            expected = sum(pub_result["window"].get(sym, 0) * n for sym, n in subscribers.items())
            result["order"] = {
                "dup": sum(r["dup"] for r in lg),  # type: ignore[index]
                "gaps": sum(r["gaps"] for r in lg),  # type: ignore[index]
            }
        else:
            delivered = sum(r["account_in_window"] for r in lg)  # type: ignore[index]
            expected = 0
            bad = {"missing": 0, "extra": 0, "order": 0, "sessions_bad": 0}
            for r in lg:
                for entry in r["account"]:  # type: ignore[index]
                    login, init, seqs = entry["login"], entry["init"], entry["seqs"]
                    expected += pub_result["window"].get(login, 0)
                    want = list(range(init + 1, init + pub_result["total"].get(login, 0) + 1))
                    if seqs != want:
                        bad["sessions_bad"] += 1
                        got = set(seqs)
                        bad["missing"] += len(set(want) - got)
                        bad["extra"] += len(seqs) - len(got) + len(got - set(want))
                        if sorted(seqs) != seqs:
                            bad["order"] += 1
            result["seq_check"] = bad
            result["seq_ok"] = bad["sessions_bad"] == 0
        result["expected"] = expected
        result["delivered"] = delivered
        result["delivered_pct"] = 100.0 * delivered / expected if expected else None
        result["lost"] = sum(r["lost"] for r in lg)  # type: ignore[index]
        result["close_codes"] = {}
        result["client_errors"] = {}
        for r in lg:
            for key in ("close_codes", "errors"):
                target = result["close_codes" if key == "close_codes" else "client_errors"]
                for k2, v in r[key].items():  # type: ignore[index]
                    target[k2] = target.get(k2, 0) + v
        result["foreign"] = sum(r["foreign"] for r in lg)  # type: ignore[index]
        # When the slow frames (> 20 ms) and the server's pings arrived, s after t0.
        slow = sorted(round(t - t0, 1) for r in lg for t, _ in r["slow"])  # type: ignore[index]
        result["slow_at"] = {str(k): slow.count(k) for k in sorted(set(slow))}
        pings = sorted(t - t0 for r in lg for t in r["pings"])  # type: ignore[index]
        result["pings"] = (
            {"n": len(pings), "first": round(pings[0], 2), "last": round(pings[-1], 2)}
            if pings
            else {"n": 0}
        )
        win = [r["window_cpu"] for r in lg if r["window_cpu"]]  # type: ignore[index]
        result["loadgen_cpu_pct"] = [100.0 * w["cpu_s"] / w["wall_s"] for w in win]
        result["loadgen_max_pct"] = max(result["loadgen_cpu_pct"], default=None)
        result["ok"] = True
        return result
    finally:
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(3.0)
            stop_process(p, 3.0)
        stop_process(srv)
        result["server_exit"] = srv.returncode if srv is not None else None
        result["log"] = log_issues(server_log, 0, log_mark)
        if log_mark is not None:
            result["shutdown_log"] = log_issues(server_log, log_mark, None)
        for p in procs:
            for stream in (p.stdin, p.stdout):
                with contextlib.suppress(Exception):
                    if stream is not None:
                        stream.close()


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function, from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]  # fmt: skip
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def pick(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(f, round(100 * n / total, 1)) for f, n in ranked]

    return {"samples": total, "self": pick(own), "inclusive": pick(incl)} if total else {}


# --------------------------------------------------------------------------- scenario s
@dataclass
class Rig:
    """The processes of one scaling measurement, kept for all its rate steps.

    Connecting 1000 authenticated sessions takes seconds of server CPU and
    a Django set-up takes a second of publisher CPU: both are done once per
    server count, not once per step.
    """

    servers: list[subprocess.Popen[Any]]
    logs: list[Path]
    loadgens: list[subprocess.Popen[Any]]
    readers: list[LineReader]
    pub: subprocess.Popen[Any]
    pub_reader: LineReader
    ready: int


def code_state() -> str:
    """HEAD and a digest of the uncommitted changes to tracked files.

    Others commit and edit in this tree while benchmarks run; scenario s
    compares two separate searches, which must have run the same code.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=ROOT, capture_output=True).stdout
    except OSError:
        return "unknown"
    return f"{head}+{hashlib.sha1(diff).hexdigest()[:8]}" if diff else head


def gc_pauses_in(logs: list[Path], t0: float, t1: float) -> dict[str, Any]:
    """GC pauses of 10 ms or more (``--gc-log``) inside ``[t0, t1)``, over all server logs."""
    pauses = []
    for log in logs:
        for fields in (line.split() for line in log.read_text(errors="replace").splitlines()):
            if fields[:1] == ["GCPAUSE"] and t0 <= float(fields[1]) < t1:
                pauses.append(float(fields[3]))
    return {"window": len(pauses), "max_ms": max(pauses, default=0.0)}


def scaling_step(rig: Rig, rate: float, env: Env, run_dir: Path) -> dict[str, Any]:
    """One rate step: publish at ``rate`` for warm-up + window, drain, judge it.

    The step *holds* if every frame due was delivered, no session was lost
    (and all are still open) and p99 <= ``--s-p99-ms``; the publisher must
    also have kept its rate (else the step says nothing about the servers).
    ``usable`` is false when the sessions can no longer be trusted for a
    further step (one closed, or frames still arriving long after the
    publisher stopped): the search stops there.
    """
    args = env.args
    step: dict[str, Any] = {"rate": rate, "holds": False, "usable": False, "reasons": []}
    t_start = time.time() + 0.3
    t0 = t_start + args.warmup
    t1 = t0 + args.s_duration
    assert rig.pub.stdin is not None
    rig.pub.stdin.write(f"GO {t_start!r} {t0!r} {t1!r} {t1 + 0.05!r} {rate!r}\n")
    rig.pub.stdin.flush()
    for p in rig.loadgens:
        assert p.stdin is not None
        p.stdin.write(f"WINDOW {t0!r} {t1!r}\n")
        p.stdin.flush()
    # Every server process with its children, one entry each (their sum is "server").
    watched = {f"server{i}": proc_tree(srv.pid) for i, srv in enumerate(rig.servers)}
    watched["loadgen"] = [p.pid for p in rig.loadgens]
    watched["publisher"] = [rig.pub.pid]
    watched["redis"] = [env.redis_pid] if env.redis_pid else []

    def sample() -> dict[str, float]:
        s = {name: cpu_seconds(pids) for name, pids in watched.items()}
        s["machine"] = machine_busy()[0]
        s["wall"] = time.time()
        return s

    time.sleep(max(0.0, t0 - time.time()))
    c0 = sample()
    time.sleep(max(0.0, t1 - time.time()))
    c1 = sample()
    wall = c1["wall"] - c0["wall"]
    cpu = {k: c1[k] - c0[k] for k in c0 if k != "wall"}
    per_server = [cpu[f"server{i}"] for i in range(len(rig.servers))]
    cpu["server"] = sum(per_server)
    step["window_s"] = wall
    step["server_cpu_pct"] = 100 * cpu["server"] / wall
    step["server_cpu_pct_each"] = [100 * c / wall for c in per_server]
    step["loadgen_cpu_pct"] = 100 * cpu["loadgen"] / wall  # all load generator processes
    step["publisher_cpu_pct"] = 100 * cpu["publisher"] / wall
    step["redis_cpu_pct"] = 100 * cpu["redis"] / wall
    step["machine_cores"] = cpu["machine"] / wall
    step["other_cores"] = max(
        0.0,
        (cpu["machine"] - cpu["server"] - cpu["loadgen"] - cpu["publisher"] - cpu["redis"]) / wall,
    )

    pub_result = rig.pub_reader.expect("RESULT", args.warmup + args.s_duration + 60)
    if pub_result is None:
        step["error"] = "publisher did not report (see publisher.err)"
        step["reasons"].append(step["error"])
        return step
    step["publisher"] = {k: v for k, v in pub_result.items() if k not in ("window", "total")}
    deadline = time.time() + args.drain
    for p in rig.loadgens:
        assert p.stdin is not None
        p.stdin.write(f"STOP {deadline!r}\n")
        p.stdin.flush()
    lg = [r.expect("RESULT", args.drain + 30) for r in rig.readers]
    if any(r is None for r in lg):
        step["error"] = "load generator did not report RESULT"
        step["reasons"].append(step["error"])
        return step
    quiet = all(r["quiet"] for r in lg)  # type: ignore[index]
    if not quiet:
        # Frames still coming after --drain: they count as not delivered, as in
        # the other scenarios, but the next step must not start under them.
        deadline = time.time() + 30
        for p in rig.loadgens:
            p.stdin.write(f"STOP {deadline!r}\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        late = [r.expect("RESULT", 60) for r in rig.readers]
        quiet = all(r is not None and r["quiet"] for r in late)
        step["drain_extended"] = True
    if args.gc_log:
        step["gc_pauses"] = gc_pauses_in(rig.logs, t0, t1)

    step.update(window_figures(run_dir, len(rig.loadgens), lg, cpu["server"]))
    subscribers: dict[str, int] = {}
    for r in lg:
        for sym, n in r["subscribers"].items():  # type: ignore[index]
            subscribers[sym] = subscribers.get(sym, 0) + n
    expected = sum(pub_result["window"].get(sym, 0) * n for sym, n in subscribers.items())
    delivered = sum(sum(r["by_symbol"].values()) for r in lg)  # type: ignore[index]
    step["expected"] = expected
    step["delivered"] = delivered
    step["delivered_pct"] = 100.0 * delivered / expected if expected else None
    step["lost"] = sum(r["lost"] for r in lg)  # type: ignore[index]
    step["alive"] = sum(r["alive"] for r in lg)  # type: ignore[index]
    step["order"] = {
        "dup": sum(r["dup"] for r in lg),  # type: ignore[index]
        "gaps": sum(r["gaps"] for r in lg),  # type: ignore[index]
    }
    step["close_codes"] = {}
    for r in lg:
        for k2, v in r["close_codes"].items():  # type: ignore[index]
            step["close_codes"][k2] = step["close_codes"].get(k2, 0) + v
    step["loadgen_cpu_pct_each"] = [
        100.0 * r["window_cpu"]["cpu_s"] / r["window_cpu"]["wall_s"]  # type: ignore[index]
        for r in lg
        if r["window_cpu"]  # type: ignore[index]
    ]

    reasons = step["reasons"]
    if not expected:
        reasons.append("nothing due")
    elif delivered < expected:
        reasons.append(f"deliv {step['delivered_pct']:.2f}%")
    if step["lost"]:
        reasons.append(f"{step['lost']} lost")
    if step["alive"] < rig.ready:
        reasons.append(f"{rig.ready - step['alive']} closed")
    if step["p99_ms"] is None or step["p99_ms"] > args.s_p99_ms:
        reasons.append(f"p99 {fmt(step['p99_ms'], '.0f')} ms")
    achieved = pub_result.get("rate")
    if achieved is None or achieved < 0.97 * rate:
        reasons.append(f"publisher {fmt(achieved, '.1f')}/s")
    if not quiet:
        reasons.append("not drained")
    step["holds"] = not reasons
    step["usable"] = quiet and step["alive"] == rig.ready
    return step


def step_line(st: dict[str, Any]) -> str:
    """One rate step, as printed while the search runs."""
    if st.get("error"):
        return f"{st['rate']:g} q/s: {st['error']}"
    each = "+".join(f"{x:.0f}" for x in st["server_cpu_pct_each"])
    verdict = "holds" if st["holds"] else "fails: " + ", ".join(st["reasons"])
    return (
        f"{st['rate']:g} q/s: deliv {fmt(st['delivered_pct'], '.2f')}%"
        f" p50 {fmt(st['p50_ms'], '.1f')} p99 {fmt(st['p99_ms'], '.1f')} ms"
        f" CPU/frame {fmt(st['cpu_per_frame_us'], '.1f')} us"
        f" srv {st['server_cpu_pct']:.0f}% ({each}) LG {st['loadgen_cpu_pct']:.0f}%"
        f" pub {st['publisher_cpu_pct']:.0f}% redis {st['redis_cpu_pct']:.0f}%"
        f" bg {st['other_cores']:.2f} machine {st['machine_cores']:.2f} cores -> {verdict}"
    )


def measure_scaling(
    server: str, nservers: int, sc: Scenario, env: Env, run_dir: Path, nprocs: int
) -> dict[str, Any]:
    """Scenario s for one server kind and ``nservers`` processes of it.

    The processes share one SQLite copy and one Redis db, as several
    workers of one deployment would; the sessions are split evenly over
    their ports. One set of sessions and one publisher serve every step:
    the rate goes up by ``--s-factor`` from ``--s-start-rate`` until a step
    fails (or ``--s-max-rate``); if the start rate fails it goes down
    instead (at most ``SCALING_MAX_DOWN`` steps); then ``--s-refine``
    bisection steps (geometric mean) between the last rate that held and the
    first that failed. The carried rate is the highest rate that held.
    """
    args = env.args
    run_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "server": server, "scenario": "s", "nservers": nservers, "ok": False, "steps": [],
        "loadgen_procs": nprocs,
    }  # fmt: skip
    result["loadavg_before"] = Path("/proc/loadavg").read_text().split()[:3]
    result["code"] = code_state()
    redis_call(env.redis_url, "FLUSHDB")
    db = run_dir / "db.sqlite3"  # one copy for all the server processes
    if env.template is not None:
        shutil.copyfile(env.template, db)
    proc_env = django_env(env, db)
    auths = session_auths(server, args.users, run_dir, proc_env)
    ports: list[int] = []
    while len(ports) < nservers:
        port = free_port()
        if port not in ports:
            ports.append(port)
    result["ports"] = ports

    procs: list[subprocess.Popen[Any]] = []
    servers: list[subprocess.Popen[Any]] = []
    logs = [run_dir / f"server{i}.log" for i in range(nservers)]
    log_marks: list[int | None] = [None] * nservers
    loadgens: list[subprocess.Popen[Any]] = []
    pub: subprocess.Popen[Any] | None = None
    try:
        for i, port in enumerate(ports):
            cmd, backlog_note = server_command(server, port, env)
            if args.gc_log:  # every server of scenario s is started with our Python
                cmd = [PY, str(BENCH / "gcwatch.py"), *cmd[1:]]
            result["backlog"] = backlog_note
            with open(logs[i], "w") as log:
                servers.append(
                    subprocess.Popen(
                        cmd,
                        cwd=ROOT,
                        env=proc_env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                )
        for srv, port in zip(servers, ports, strict=True):
            if not wait_port(port, srv, 60):
                result["error"] = f"server on port {port} did not start"
                return result
        for port in ports:  # lazy set-up of each process, as in measure()
            warm = asyncio.run(_warm(port, [{"auth": auths[0], "symbols": ["BENCH-WARMUP"]}]))
            if warm["ready"] != 1:
                result["error"] = f"warm-up session on port {port} failed: {warm['failures']}"
                return result
        time.sleep(0.5)

        # session j of each load generator process -> ports[j % nservers]
        started, readers = start_loadgens(
            sc, auths, nprocs, args.concurrency, run_dir, {"ports": ports, "steps": True}
        )
        procs.extend(started)
        loadgens.extend(started)
        readies = [r.expect("READY", 200) for r in readers]
        if any(r is None for r in readies):
            result["error"] = "load generator did not report READY"
            return result
        ready = sum(r["ready"] for r in readies)  # type: ignore[index]
        by_port: dict[str, int] = {}
        failures: dict[str, int] = {}
        for r in readies:
            for key, v in r["by_port"].items():  # type: ignore[index]
                by_port[key] = by_port.get(key, 0) + v
            for key, v in r["failures"].items():  # type: ignore[index]
                failures[key] = failures.get(key, 0) + v
        result["sessions"] = len(sc.sessions)
        result["ready"] = ready
        result["ready_by_port"] = [by_port.get(str(port), 0) for port in ports]
        result["connect_failures"] = failures
        result["connect_s"] = max(r["done"] for r in readies) - min(r["started"] for r in readies)  # type: ignore[index]
        if ready < len(sc.sessions):
            result["error"] = f"only {ready}/{len(sc.sessions)} sessions ready: {failures}"
            return result

        pub = spawn(
            [PY, str(BENCH / "publisher.py"), "--server", server, "--kind", "quotes",
             "--rate", str(sc.rate), "--redis", env.redis_url, "--symbols", SCALING_SYMBOL,
             "--steps"],
            run_dir / "publisher.err", cwd=ROOT, env=proc_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(pub)
        pub_reader = LineReader(pub)
        time.sleep(0.5)
        tree = [pid for srv in servers for pid in proc_tree(srv.pid)]
        idle0, idle_t0 = cpu_seconds(tree), time.time()
        time.sleep(1.0)
        result["idle_cpu_pct"] = 100 * (cpu_seconds(tree) - idle0) / (time.time() - idle_t0)
        if pub_reader.expect("PUBREADY", 60) is None:
            result["error"] = "publisher did not start (see publisher.err)"
            return result
        rig = Rig(servers, logs, loadgens, readers, pub, pub_reader, ready)

        def run_step(rate: float) -> dict[str, Any]:
            """One step, redone (``--max-bg``) if other load disturbed it; the quietest is kept."""
            kept: dict[str, Any] | None = None
            tries = 0
            while True:
                tries += 1
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                time.sleep(1.0)  # the servers idle between steps
                st = scaling_step(rig, rate, env, run_dir)
                print(f"    x{nservers} " + step_line(st), flush=True)
                if kept is None or (
                    not st.get("error") and st["other_cores"] < kept.get("other_cores", 1e9)
                ):
                    kept = st
                noisy = not st.get("error") and args.max_bg and st["other_cores"] > args.max_bg
                if not noisy or not st["usable"] or tries > args.max_bg_retries:
                    break
                print(f"    other load {st['other_cores']:.2f} cores: again", flush=True)
            kept["tries"] = tries
            result["steps"].append(kept)
            return kept

        good: dict[str, Any] | None = None
        bad: dict[str, Any] | None = None
        rate = sc.rate
        while True:  # upward
            st = run_step(rate)
            if not st["holds"]:
                bad = st
                break
            good = st
            nxt = round(rate * args.s_factor, 1)
            if nxt > args.s_max_rate or nxt <= rate:
                result["at_cap"] = True
                break
            rate = nxt
        if good is None and bad is not None and bad["usable"]:  # downward
            for _ in range(SCALING_MAX_DOWN):
                rate = round(rate / args.s_factor, 1)
                if rate <= 0:
                    break
                st = run_step(rate)
                if st["holds"]:
                    good = st
                    break
                bad = st
                if not st["usable"]:
                    break
        for _ in range(args.s_refine):  # bisection between the last good and first bad rate
            if good is None or bad is None or not bad["usable"]:
                break
            mid = round(math.sqrt(good["rate"] * bad["rate"]), 1)
            if not good["rate"] < mid < bad["rate"]:
                break
            st = run_step(mid)
            if st["holds"]:
                good = st
            else:
                bad = st
        result["carried_rate"] = good["rate"] if good else None
        result["carried"] = good
        result["first_failed"] = bad
        result["ok"] = True
        result["code_end"] = code_state()
        return result
    finally:
        for i, log in enumerate(logs):
            with contextlib.suppress(OSError):
                log_marks[i] = log.stat().st_size  # before the sessions close
        for p in loadgens:
            with contextlib.suppress(OSError, ValueError):
                p.stdin.write("BYE\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
        if pub is not None:
            with contextlib.suppress(OSError, ValueError):
                pub.stdin.close()  # type: ignore[union-attr]  # EOF: the publisher exits
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(3.0)
            stop_process(p, 3.0)
        for srv in servers:
            stop_process(srv)
        result["server_exit"] = [srv.returncode for srv in servers]
        issues = [log_issues(log, 0, mark) for log, mark in zip(logs, log_marks, strict=True)]
        result["log"] = {
            key: sum(i.get(key, 0) for i in issues)
            for key in ("tracebacks", "errors", "warnings", "closing")
        }
        result["log"]["excerpt"] = next((i["excerpt"] for i in issues if i.get("excerpt")), "")
        result["log"]["tail"] = "\n".join(
            f"[server {k}] {i['tail']}" for k, i in enumerate(issues) if i.get("tail")
        )
        for p in procs:
            for stream in (p.stdin, p.stdout):
                with contextlib.suppress(Exception):
                    if stream is not None:
                        stream.close()


def scaling_summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per server kind and run: carried rates with 1 and 2 processes, their ratio.

    The machine's busy cores (all processes, other load included) at the
    carried rate and at the first failed step go with it: on a 2-core
    machine the load generator, the publisher and Redis take CPU from the
    servers, so a ratio under 1.7 with the machine near 2 busy cores says
    more about the machine than about broker_ws.
    """
    rows = []
    keys = sorted({(r["server"], r["run"]) for r in results}, key=lambda k: (k[1], k[0]))
    for server, run in keys:
        row: dict[str, Any] = {"server": server, "run": run}
        for n in SCALING_COUNTS:
            r = next((x for x in results if (x["server"], x["run"], x["nservers"]) ==
                      (server, run, n)), None)  # fmt: skip
            good = (r or {}).get("carried") or {}
            bad = (r or {}).get("first_failed") or {}
            row[f"n{n}"] = {
                "ok": bool(r and r.get("ok")),
                "error": (r or {}).get("error"),
                "carried_rate": (r or {}).get("carried_rate"),
                "at_cap": bool((r or {}).get("at_cap")),
                "p99_ms": good.get("p99_ms"),
                "cpu_per_frame_us": good.get("cpu_per_frame_us"),
                "server_cpu_pct": good.get("server_cpu_pct"),
                "loadgen_cpu_pct": good.get("loadgen_cpu_pct"),
                "publisher_cpu_pct": good.get("publisher_cpu_pct"),
                "redis_cpu_pct": good.get("redis_cpu_pct"),
                "other_cores": good.get("other_cores"),
                "machine_cores": good.get("machine_cores"),
                "failed_rate": bad.get("rate"),
                "failed_reasons": bad.get("reasons"),
                "failed_machine_cores": bad.get("machine_cores"),
                "failed_other_cores": bad.get("other_cores"),
            }
        c1, c2 = row["n1"]["carried_rate"], row["n2"]["carried_rate"]
        row["ratio"] = c2 / c1 if c1 and c2 else None
        row["code"] = sorted({
            x.get(key) for x in results if (x["server"], x["run"]) == (server, run)
            for key in ("code", "code_end") if x.get(key)
        })  # fmt: skip
        rows.append(row)
    return rows


def report_scaling(sc: Scenario, results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Every step of every measurement, then the carried rates and their ratio."""
    ncpu = os.cpu_count() or 0
    out = ["", sc.title]
    head = (
        f"  {'q/s':>7} {'pub/s':>7} {'deliv%':>7} {'p50 ms':>8} {'p99 ms':>8} {'CPU/fr us':>9}"
        f" {'srvCPU%':>7} {'per proc':>9} {'LG%':>4} {'pub%':>4} {'rds%':>4} {'bg':>5}"
        f" {'machine':>7}  verdict"
    )
    for r in results:
        out.append("")
        lg = f"loadgen x{r.get('loadgen_procs')}"
        if not r.get("ok") and not r.get("steps"):
            out.append(
                f"{r['server']} x{r['nservers']} (run {r['run'] + 1}): FAILED: {r.get('error')}"
            )
            continue
        split = "/".join(str(x) for x in r.get("ready_by_port", []))
        out.append(
            f"{r['server']} x{r['nservers']} process(es) (run {r['run'] + 1}): "
            f"{r.get('ready')}/{r.get('sessions')} sessions ready ({split} per process, "
            f"connect {fmt(r.get('connect_s'), '.2f')} s), {lg}, server idle CPU "
            f"{fmt(r.get('idle_cpu_pct'), '.1f')}%"
            + (f"; FAILED: {r.get('error')}" if r.get("error") else "")
        )
        out.append(head)
        out.append("  " + "-" * (len(head) - 2))
        for st in r["steps"]:
            if st.get("error"):
                out.append(f"  {st['rate']:>7g} {st['error']}")
                continue
            each = "+".join(f"{x:.0f}" for x in st["server_cpu_pct_each"])
            pub = st.get("publisher") or {}
            verdict = "holds" if st["holds"] else "fails: " + ", ".join(st["reasons"])
            extra = []
            if st.get("gc_pauses"):
                gcp = st["gc_pauses"]
                extra.append(f"GC {gcp['window']} (max {gcp['max_ms']:.0f} ms)")
            if st["order"]["dup"] or st["order"]["gaps"]:
                extra.append(f"dup {st['order']['dup']} gaps {st['order']['gaps']}")
            if st.get("tries", 1) > 1:
                extra.append(f"{st['tries']} tries")
            out.append(
                f"  {st['rate']:>7g} {fmt(pub.get('rate'), '.1f'):>7}"
                f" {fmt(st['delivered_pct'], '.2f'):>7} {fmt(st['p50_ms'], '.1f'):>8}"
                f" {fmt(st['p99_ms'], '.1f'):>8} {fmt(st['cpu_per_frame_us'], '.1f'):>9}"
                f" {st['server_cpu_pct']:7.0f} {each:>9} {st['loadgen_cpu_pct']:4.0f}"
                f" {st['publisher_cpu_pct']:4.0f} {st['redis_cpu_pct']:4.0f}"
                f" {st['other_cores']:5.2f} {st['machine_cores']:7.2f}  {verdict}"
                + (f" ({'; '.join(extra)})" if extra else "")
            )
    rows = scaling_summary(results)
    out.append("")
    out.append(
        f"carried quote rate at p99 <= {args.s_p99_ms:g} ms (100 % delivered, no session lost); "
        f"machine = busy cores of {ncpu}, all processes (bg = other load)"
    )
    head = (
        f"{'server':<18} {'run':>3} {'procs':>5} {'carried q/s':>11} {'ratio':>6} {'p99 ms':>7}"
        f" {'srvCPU%':>7} {'LG%':>4} {'pub%':>4} {'bg':>5} {'machine':>7}"
        f"  first failed step (machine cores)"
    )
    out.append(head)
    out.append("-" * len(head))
    for row in rows:
        for n in SCALING_COUNTS:
            c = row[f"n{n}"]
            ratio = f"{row['ratio']:.2f}x" if n == 2 and row["ratio"] else "-"
            if c["carried_rate"] is None:
                carried = "none" if c["ok"] else "FAILED"
            else:
                carried = f"{c['carried_rate']:g}" + ("+" if c["at_cap"] else "")
            failed = "-"
            if c["failed_rate"] is not None:
                failed = (
                    f"{c['failed_rate']:g} q/s: {', '.join(c['failed_reasons'] or [])}"
                    f" ({fmt(c['failed_machine_cores'], '.2f')})"
                )
            elif c["error"]:
                failed = str(c["error"])
            out.append(
                f"{row['server']:<18} {row['run'] + 1:>3} {n:>5} {carried:>11} {ratio:>6}"
                f" {fmt(c['p99_ms'], '.1f'):>7} {fmt(c['server_cpu_pct'], '.0f'):>7}"
                f" {fmt(c['loadgen_cpu_pct'], '.0f'):>4} {fmt(c['publisher_cpu_pct'], '.0f'):>4}"
                f" {fmt(c['other_cores'], '.2f'):>5} {fmt(c['machine_cores'], '.2f'):>7}  {failed}"
            )
    out.append("")
    for row in rows:
        c1, c2 = row["n1"], row["n2"]
        if row["ratio"] is None:
            out.append(
                f"{row['server']} (run {row['run'] + 1}): no ratio (a carried rate is missing)"
            )
            continue
        verdict = "meets" if row["ratio"] >= 1.7 else "does NOT meet"
        if c1["at_cap"] or (c2["at_cap"] and row["ratio"] < 1.7):
            verdict = "cannot judge (a carried rate is at --s-max-rate: raise it)"
        busy = max(
            [x for x in (c2["machine_cores"], c2["failed_machine_cores"]) if x is not None],
            default=0.0,
        )
        note = ""
        if row["ratio"] < 1.7 and ncpu and busy >= 0.85 * ncpu:
            note = (
                f"; the machine was {busy:.2f} of {ncpu} cores busy with 2 processes: "
                "the machine, not necessarily broker_ws, limits the ratio"
            )
        # The deciding steps (carried and first failed, both counts) must have
        # run on the same machine: other load in some of them skews the ratio.
        bg = [
            c[key]
            for c in (c1, c2)
            for key in ("other_cores", "failed_other_cores")
            if c[key] is not None
        ]
        if bg and max(bg) > 0.3:
            note += (
                f"; other load up to {max(bg):.2f} cores in the deciding steps skews the ratio"
                " (rerun with --max-bg 0.3 --wait-quiet 10)"
            )
        out.append(
            f"{row['server']} (run {row['run'] + 1}): 2 processes carry {row['ratio']:.2f}x the "
            f"rate of 1 ({fmt(c2['carried_rate'], 'g')} vs {fmt(c1['carried_rate'], 'g')} q/s): "
            f"{verdict}{'' if verdict.startswith('cannot') else ' the 1.7x requirement'}{note}"
            + ("; a carried rate is at --s-max-rate (a lower bound)"
               if c2["at_cap"] and not verdict.startswith("cannot") else "")
            + (f"; the code changed during the measurements ({', '.join(row['code'])})"
               if len(row["code"]) > 1 else "")
        )  # fmt: skip
    return "\n".join(out)


# --------------------------------------------------------------------------- report
METRICS = [
    "delivered_pct", "p50_ms", "p99_ms", "cpu_per_frame_us", "cpu_per_frame_above_idle_us",
    "idle_cpu_pct", "lost", "connect_s",
    "rss_per_session_kb", "connect_failed", "server_cpu_pct", "other_cores", "loadgen_max_pct",
]  # fmt: skip


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get("ok") and r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(
    scenarios: list[Scenario], servers: list[str], all_results: dict[tuple[str, str], list[dict]]
) -> str:
    out = []
    for sc in scenarios:
        out.append("")
        out.append(sc.title)
        head = (
            f"{'server':<18} {'deliv%':>7} {'p50 ms':>8} {'p99 ms':>8} {'CPU/fr us':>9} "
            f"{'lost':>5} {'conn s':>7} {'KB/sess':>8} {'bw/row CPU':>10} {'bw/row p99':>10}"
            f" {'srvCPU%':>7} {'LG%':>4} {'bg':>5} {'fail':>5}"
            + ("  seq ok" if sc.kind == "saves" else "")
        )
        out.append(head)
        out.append("-" * len(head))
        med: dict[str, dict[str, float | None]] = {}
        for server in servers:
            rs = all_results.get((sc.name, server), [])
            med[server] = {m: median_of(rs, m) for m in METRICS}
        bw = med.get("broker_ws", {})
        for server in servers:
            rs = all_results.get((sc.name, server), [])
            m = med[server]
            if not any(r.get("ok") for r in rs):
                errors = "; ".join(sorted({str(r.get("error")) for r in rs}))
                out.append(f"{server:<18} FAILED: {errors}")
                continue
            ratio_cpu = ratio_p99 = "-"
            if server != "broker_ws" and bw.get("cpu_per_frame_us") and m["cpu_per_frame_us"]:
                ratio_cpu = f"{bw['cpu_per_frame_us'] / m['cpu_per_frame_us']:.2f}x"
            if server != "broker_ws" and bw.get("p99_ms") and m["p99_ms"]:
                ratio_p99 = f"{bw['p99_ms'] / m['p99_ms']:.2f}x"
            line = (
                f"{server:<18} {fmt(m['delivered_pct'], '7.2f')} {fmt(m['p50_ms'], '8.1f')} "
                f"{fmt(m['p99_ms'], '8.1f')} {fmt(m['cpu_per_frame_us'], '9.1f')} "
                f"{fmt(m['lost'], '5.0f')} {fmt(m['connect_s'], '7.2f')} "
                f"{fmt(m['rss_per_session_kb'], '8.1f')} {ratio_cpu:>10} {ratio_p99:>10}"
                f" {fmt(m['server_cpu_pct'], '7.0f')} {fmt(m['loadgen_max_pct'], '4.0f')}"
                f" {fmt(m['other_cores'], '5.2f')}"
                f" {fmt(m['connect_failed'], '5.0f')}"
            )
            if sc.kind == "saves":
                oks = [r.get("seq_ok") for r in rs if r.get("ok")]
                line += "  " + ("yes" if oks and all(oks) else "NO")
            out.append(line)
        out.append("")
        split = [
            f"{server} {fmt(med[server]['idle_cpu_pct'], '.2f')}% /"
            f" {fmt(med[server]['cpu_per_frame_above_idle_us'], '.1f')} us"
            for server in servers
            if any(r.get("ok") for r in all_results.get((sc.name, server), []))
        ]
        out.append(
            "  server CPU with nothing published (% of a core) / CPU per frame above that: "
            + "; ".join(split)
        )
        out.append("")
        out.append("  details (last run of each server):")
        for server in servers:
            rs = [r for r in all_results.get((sc.name, server), []) if r.get("ok")]
            if not rs:
                continue
            r = rs[-1]
            pub = r.get("publisher", {})
            share = r.get("cpu_share", {})
            lg_cpu = "/".join(f"{x:.0f}%" for x in r.get("loadgen_cpu_pct", []))
            parts = [
                f"{r['backlog']}",
                f"ready {r['ready']}/{r['sessions']}",
                f"frames {r['delivered']}/{r['expected']}",
                f"published {pub.get('in_window')} in window ({fmt(pub.get('rate'), '.1f')}/s, "
                f"call p50 {fmt(pub.get('call_p50_ms'), '.2f')} ms"
                f" p99 {fmt(pub.get('call_p99_ms'), '.2f')} ms)",
                f"server CPU idle {r['idle_cpu_pct']:.2f}%"
                f" / window {100 * share.get('server', 0):.1f}%",
                f"loadgen x{r.get('loadgen_procs', 1)} CPU {lg_cpu} of a core"
                f" (connect {r['loadgen_connect_cpu_s']:.2f} s)",
                f"publisher CPU {100 * share.get('publisher', 0):.0f}%",
                f"redis CPU {100 * share.get('redis', 0):.0f}%",
                f"other load {r.get('other_cores', 0):.2f} cores",
                f"RSS {r['rss_before_kb'] / 1024:.0f}->{r['rss_after_kb'] / 1024:.0f}"
                f"->{r['rss_end_kb'] / 1024:.0f} MB",
            ]
            gcp = r.get("gc_pauses")
            if gcp:
                parts.append(
                    f"GC pauses >= 10 ms in window {gcp['window']} (max {gcp['max_ms']:.0f} ms)"
                )
            if r.get("order") and (r["order"]["dup"] or r["order"]["gaps"]):
                parts.append(f"order dup {r['order']['dup']} gaps {r['order']['gaps']}")
            if r.get("seq_check") and not r.get("seq_ok"):
                parts.append(f"seq {r['seq_check']}")
            if r.get("close_codes"):
                parts.append(f"close codes {r['close_codes']}")
            if r.get("client_errors"):
                parts.append(f"error replies {r['client_errors']}")
            if r.get("connect_failures"):
                parts.append(f"connect failures {r['connect_failures']}")
            log = r.get("log", {})
            if log.get("tracebacks") or log.get("errors") or log.get("warnings"):
                parts.append(
                    f"server log: {log['tracebacks']} tracebacks, {log['errors']} errors, "
                    f"{log['warnings']} warnings"
                )
            out.append(f"  {server}: " + "; ".join(parts))
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario", default="a,b,c",
        help="comma-separated: a,b,c, and s (scaling over 1 and 2 server processes; "
        "not in the default)",
    )  # fmt: skip
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    parser.add_argument(
        "--duration", type=float, default=20.0,
        help="measurement window of a, b, c: 20 s, the servers' ping interval, so that "
        "every window holds one keepalive ping per session whichever server it measures",
    )  # fmt: skip
    parser.add_argument("--warmup", type=float, default=2.0, help="publishing before the window, s")
    parser.add_argument("--drain", type=float, default=5.0, help="max wait for late frames, s")
    parser.add_argument("--users", type=int, default=500, help="bench users = logins")
    parser.add_argument("--a-sessions", type=int, default=1000)
    parser.add_argument("--a-rate", type=float, default=10.0)
    parser.add_argument("--b-rate", type=float, default=100.0)
    parser.add_argument("--b-per-session", type=int, default=2, help="symbols per session in (b)")
    parser.add_argument("--c-rate", type=float, default=50.0)
    parser.add_argument("--s-sessions", type=int, default=1000, help="sessions in (s)")
    parser.add_argument("--s-start-rate", type=float, default=10.0, help="first rate of (s), q/s")
    parser.add_argument("--s-factor", type=float, default=1.5, help="rate step factor in (s)")
    parser.add_argument("--s-max-rate", type=float, default=1000.0, help="rate cap in (s), q/s")
    parser.add_argument("--s-duration", type=float, default=10.0, help="window per step of (s)")
    parser.add_argument("--s-p99-ms", type=float, default=150.0, help="p99 a step of (s) must hold")
    parser.add_argument(
        "--s-refine", type=int, default=1,
        help="bisection steps between the last good and the first bad rate in (s)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=500, help="connects in flight")
    parser.add_argument(
        "--loadgen-procs", default="auto",
        help="load generator processes; auto: 1, and 2 if one used more than 60%% of a core "
        "(scenario s: 2)",
    )  # fmt: skip
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--json", help="write every raw result here")
    parser.add_argument(
        "--max-bg", type=float, default=0.0, metavar="CORES",
        help="repeat a measurement whose window saw more other load than this (0: never)",
    )  # fmt: skip
    parser.add_argument("--max-bg-retries", type=int, default=2)
    parser.add_argument(
        "--gc-log", action="store_true",
        help="run the servers under bench/gcwatch.py and report GC pauses >= 10 ms",
    )  # fmt: skip
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S",
        help="before each measurement wait up to S s for other load to drop under 0.3 cores",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="sample the server with py-spy (pip install py-spy; perturbs the numbers)",
    )  # fmt: skip
    parser.add_argument(
        "--profile-rate", type=int, default=100, metavar="HZ",
        help="py-spy's sampling rate in the measurement window (at (c)'s few frames a "
        "second, 1000 gives enough samples)",
    )  # fmt: skip
    parser.add_argument(
        "--profile-gil", action="store_true",
        help="sample only while the server's Python holds the GIL (py-spy --gil): its own "
        "work, without the time it waits in epoll",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, DBs)")
    args = parser.parse_args()

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            raise SystemExit(f"unknown server {s!r}; choose from {SERVERS}")
    scenarios = [build_scenario(s.strip(), args) for s in args.scenario.split(",") if s.strip()]
    scaling_servers = [s for s in servers if s in SCALING_SERVERS]
    if any(sc.name == "s" for sc in scenarios):
        skipped = [s for s in servers if s not in SCALING_SERVERS]
        if skipped:
            print(
                f"scenario s: skipping {', '.join(skipped)} (the scaling scenario runs "
                f"{', '.join(SCALING_SERVERS)} only; naive cannot carry one process's rate)",
                flush=True,
            )
        if args.s_factor <= 1.0:
            raise SystemExit("--s-factor must be above 1")
    if args.redis_url.rstrip("/").endswith("/0"):
        raise SystemExit(
            "use a Redis db other than 0 (the tests use it): FLUSHDB runs before each server"
        )

    tmp = Path(tempfile.mkdtemp(prefix="bws-bench-"))
    env = Env(args=args, tmp=tmp, redis_url=args.redis_url, redis_pid=redis_pid(args.redis_url))
    began = time.time()
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        revision = f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except OSError:
        revision = "unknown"
    print(
        f"broker_ws fan-out benchmark: {os.cpu_count()} CPUs, loadavg "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}, Redis {args.redis_url}, "
        f"window {args.duration:g} s after {args.warmup:g} s warm-up, {args.runs} run(s), "
        f"code {revision}",
        flush=True,
    )
    all_results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    raw: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    try:
        if any(s.startswith("broker_ws") for s in servers) or "naive" in servers:
            template = tmp / "template.sqlite3"
            subprocess.run(
                [PY, str(BENCH / "bw_setup.py"), "template", "--users", str(args.users)],
                cwd=ROOT, env=django_env(env, template), check=True,
            )  # fmt: skip
            env.template = template
        for run in range(args.runs):
            for sc in scenarios:
                if sc.name == "s":
                    # One load generator process would be the bottleneck at the
                    # frame rates this scenario reaches; the same split for 1 and 2.
                    nprocs = 2 if args.loadgen_procs == "auto" else int(args.loadgen_procs)
                    for server in scaling_servers:
                        for n in SCALING_COUNTS:
                            label = f"[run {run + 1}/{args.runs}] scenario s {server} x{n}"
                            print(f"{label} process(es), loadgen x{nprocs} ...", flush=True)
                            if args.wait_quiet:
                                bg = wait_quiet(args.wait_quiet)
                                print(f"  (background {bg:.2f} cores)", flush=True)
                            t = time.time()
                            try:
                                r = measure_scaling(
                                    server, n, sc, env, tmp / f"r{run}-s-{server}-{n}", nprocs
                                )
                            except Exception as exc:  # keep going; report it
                                r = {"server": server, "scenario": "s", "nservers": n,
                                     "ok": False, "error": repr(exc), "steps": []}  # fmt: skip
                            r["run"] = run
                            raw.append(r)
                            scaling.append(r)
                            if r.get("ok"):
                                c = r.get("carried_rate")
                                carried = "none" if c is None else f"{c:g}"
                                print(
                                    f"  {time.time() - t:.0f} s: carried {carried} q/s", flush=True
                                )
                            else:
                                print(f"  FAILED: {r.get('error')}", flush=True)
                                tail = (r.get("log") or {}).get("tail")
                                if tail:
                                    print("  server log tail:\n    " + tail.replace("\n", "\n    "))
                    continue
                for server in servers:
                    label = f"[run {run + 1}/{args.runs}] scenario {sc.name} {server}"
                    print(f"{label} ...", end=" ", flush=True)
                    t = time.time()
                    auto = args.loadgen_procs == "auto"
                    nprocs = 1 if auto else int(args.loadgen_procs)
                    tries = 0
                    kept: dict[str, Any] | None = None
                    while True:
                        tries += 1
                        if args.wait_quiet:
                            bg = wait_quiet(args.wait_quiet)
                            print(f"(background {bg:.2f} cores)", end=" ", flush=True)
                        try:
                            r = measure(
                                server, sc, env, tmp / f"r{run}-{sc.name}-{server}-{nprocs}", nprocs
                            )
                        except Exception as exc:  # keep going; report it
                            r = {"server": server, "scenario": sc.name, "ok": False,
                                 "error": repr(exc)}  # fmt: skip
                        busy = max(r.get("loadgen_cpu_pct") or [0])
                        if auto and nprocs == 1 and busy > LOADGEN_LIMIT:
                            print(f"load generator at {busy:.0f}% of a core: again with 2 ...",
                                  end=" ", flush=True)  # fmt: skip
                            nprocs = 2
                            continue
                        r["loadgen_procs"] = nprocs
                        if kept is None or (r.get("ok") and (
                            not kept.get("ok") or r["other_cores"] < kept["other_cores"]
                        )):  # fmt: skip
                            kept = r
                        noisy = r.get("ok") and args.max_bg and r["other_cores"] > args.max_bg
                        if noisy and tries <= args.max_bg_retries:
                            print(f"other load {r['other_cores']:.2f} cores: again ...",
                                  end=" ", flush=True)  # fmt: skip
                            continue
                        break
                    r = kept
                    r["tries"] = tries
                    r["run"] = run
                    raw.append(r)
                    all_results.setdefault((sc.name, server), []).append(r)
                    if r.get("ok"):
                        print(
                            f"{time.time() - t:.0f} s: "
                            f"delivered {fmt(r.get('delivered_pct'), '.2f')}%"
                            f" p50 {fmt(r.get('p50_ms'), '.1f')} ms"
                            f" p99 {fmt(r.get('p99_ms'), '.1f')} ms"
                            f" CPU/frame {fmt(r.get('cpu_per_frame_us'), '.1f')} us"
                            f" lost {r.get('lost')} connect {fmt(r.get('connect_s'), '.2f')} s"
                            " loadgen "
                            + "/".join(f"{x:.0f}%" for x in r.get("loadgen_cpu_pct", [])),
                            flush=True,
                        )
                    else:
                        print(f"FAILED: {r.get('error')}", flush=True)
                        tail = (r.get("log") or {}).get("tail")
                        if tail:
                            print("  server log tail:\n    " + tail.replace("\n", "\n    "))
        print(report([sc for sc in scenarios if sc.name != "s"], servers, all_results))
        for sc in scenarios:
            if sc.name == "s" and scaling:
                print(report_scaling(sc, scaling, args))
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(
            f"\nmedians of {args.runs} run(s); total {time.time() - began:.0f} s; "
            f"loadavg now {loadavg}"
        )
        for r, key in [(r, k) for r in raw for k in ("profile_connect", "profile")]:
            prof = r.get(key)
            if prof:
                phase = "connect storm" if key == "profile_connect" else "window"
                print(f"\nprofile of {r['server']} during the {phase} (scenario {r['scenario']}, "
                      f"run {r['run'] + 1}), {prof['samples']} samples; self %:")  # fmt: skip
                for f, pct in prof["self"]:
                    print(f"  {pct:5.1f}  {f}")
                print("  inclusive %:")
                for f, pct in prof["inclusive"]:
                    print(f"  {pct:5.1f}  {f}")
        issues = [r for r in raw if (r.get("log") or {}).get("tracebacks")]
        for r in issues[:3]:
            print(f"\nserver log of {r['server']} (scenario {r['scenario']}, run {r['run'] + 1}), "
                  f"first traceback:\n{r['log']['excerpt']}")  # fmt: skip
        if args.json:
            for r in raw:
                (r.get("log") or {}).pop("tail", None)
            if scaling:
                raw.append({"scenario": "s", "summary": scaling_summary(scaling)})
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
            print(f"raw results: {args.json}")
    finally:
        with contextlib.suppress(Exception):
            redis_call(env.redis_url, "FLUSHDB")  # leave the bench db empty
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
