"""A rolling restart of two daphne processes under 1000 sessions: nothing lost, nothing twice.

    .venv/bin/python bench/rolling.py [--sessions 1000] [--seconds 20] [--rate 50] [--json out.json]

The scenario of ``tests/test_rolling_restart.py`` (which runs it with 200 sessions),
at benchmark size: a deployment on a private PostgreSQL and a private Redis
(``tests.services``: the machine's shared servers are not touched); two server
processes A and B (``manage.py rundemo --no-feed``, daphne, ``DRAIN_WINDOW``
``--window`` s, ``MAX_SESSIONS_PER_LOGIN`` 5000); ``--sessions`` clients of alice
(logins 1001, 1002) and bob (2001), half each, in this one process (asyncio, uvloop
when installed; the ``websockets`` client, source addresses spread over
127.0.0.2-127.0.0.61), each connected to a random server of the rotation; a saver
process saving the three balances at ``--rate`` saves/s in all. After
``--first-drain-after`` s, A leaves the rotation and gets SIGTERM, A' starts on a new
port and joins it; once every client of A is authorized elsewhere and A has exited,
the same for B and B'. The saver stops once ``--seconds`` have passed (or later if
the restarts took longer) and reads the final seq of each login from the database;
the run waits until every client has it.

Every client follows docs/protocol.md: last seq per login; apply seq == last + 1;
ignore seq <= last (counted: the frames both connections of a handover delivered);
seq > last + 1 is a loss. On the ``reconnect`` notice it reconnects at a random
moment within ``within_ms`` (at once on an earlier 4009) to another server of the
rotation, with ``resume``, and closes the old connection once the new one is
``authorized``. Each connection is also checked on its own against the resume
contract (base + 1, base + 2, ... from the seq it resumed from).

Printed: sessions, saves, frames delivered / applied / ignored as duplicates /
lost, resyncs, reconnects, the save-to-client latency of balance frames (from
their ``updated_at``; frames replayed after a move count with their age), and
for each drained server the time from the notice to the new ``authorized``
(p50/p99/max over its clients; the client's random wait within the window is part
of it, so the time from the start of its reconnect is printed as well, split into
handshake and authorization), when the last client was re-authorized and when the
process exited (both from its SIGTERM). Then the machine's CPU: this process's,
the servers', and the average number of busy cores overall, since a 2-core
machine shared with other work shows in every latency.
Last, one JSON line with every figure (``--json FILE`` writes it to a file too).
Exit status 1 if any promise of the protocol was broken (loss, a frame applied
twice, a resync, an undocumented close, a server that logged an error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_rolling_restart import (  # noqa: E402
    failures,
    private_services,
    run_rolling,
    summarize,
)


def raise_nofile() -> int:
    """Lift the soft limit on open files to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def fmt(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "-"
    return f"p50 {p['p50']:.3f}  p99 {p['p99']:.3f}  max {p['max']:.3f} s  (n={p['n']})"


def report(figures: dict[str, Any], busy_cores: float, cores: int) -> None:
    f = figures
    print(f"sessions                      {f['sessions']}  ({f['by_user']})")
    print(
        f"saves                         {f['saves']} in {f['save_seconds']} s "
        f"({f['save_rate']}/s; per login {f['saves_per_login']})"
    )
    print(f"frames delivered              {f['frames_delivered']}")
    lag = f["save_to_client_ms"]
    print(
        f"save -> client (b frames)     p50 {lag['p50']} ms  p99 {lag['p99']} ms  "
        f"max {lag['max']} ms"
    )
    print(f"frames applied                {f['frames_applied']}")
    print(f"frames ignored as duplicates  {f['frames_ignored_duplicates']}")
    print(f"frames applied twice          {f['frames_applied_twice']}")
    print(f"frames lost                   {f['frames_lost']}")
    print(
        f"per-session repeats / skips   {f['session_duplicates']} / {f['session_gaps']}"
        "  (a single connection breaking the resume contract)"
    )
    print(f"resyncs                       {f['resyncs']}")
    print(
        f"reconnects                    {f['reconnects']}  (bounced off a draining server: "
        f"{f['bounces']}, failed connects: {f['connect_failures']})"
    )
    print(f"closes seen                   {f['closes']}")
    for d in f["drains"]:
        print(
            f"drain of {d['server']}: {d['sessions']} sessions -> {d['to']}; "
            f"{d['replacement']} up {d['replacement_ready_after_sigterm_s']:.2f} s after SIGTERM"
        )
        print(f"  notice -> authorized        {fmt(d['notice_to_authorized_s'])}")
        print(f"  reconnect -> authorized     {fmt(d['reconnect_to_authorized_s'])}")
        print(f"    handshake                 {fmt(d['handshake_s'])}")
        print(f"    authorization             {fmt(d['authorization_s'])}")
        print(
            f"  all re-authorized           {d['all_moved_after_sigterm_s']:.3f} s after SIGTERM; "
            f"process exited {d['exited_after_sigterm_s']:.3f} s after it"
        )
        print(
            f"  frames saved meanwhile      {d['frames_saved_meanwhile']}; "
            f"closed before the client left: {d['closed_before_leaving']}/{d['moves']}"
        )
    print(f"initial connects              {f['connect_seconds']:.2f} s for all")
    print(f"caught up after saver stop    {f['caught_up_after_saver_stop_s']:.3f} s")
    print(
        f"CPU                           clients {f['client_cpu_seconds']} s, "
        f"servers {f['server_cpu_seconds']} s; machine {busy_cores:.2f} of {cores} cores busy "
        f"on average over {f['run_seconds']} s"
    )
    if f["log_problems"]:
        print(f"server log problems           {f['log_problems']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="least time the saver runs")
    parser.add_argument("--rate", type=float, default=50.0, help="saves per second, in all")
    parser.add_argument("--window", type=float, default=3.0, help="DRAIN_WINDOW of the servers")
    parser.add_argument("--first-drain-after", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=100, help="initial connects in flight")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--json", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--keep", type=Path, help="keep the server logs in this folder")
    args = parser.parse_args()

    nofile = raise_nofile()
    if nofile < args.sessions * 2 + 100:
        parser.error(f"RLIMIT_NOFILE is {nofile}: too low for {args.sessions} sessions")
    runner: Any = asyncio.run
    if args.loop == "uvloop":
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            print("uvloop not installed: plain asyncio", file=sys.stderr)

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bws-rolling-") as tmp:
        log_dir = args.keep or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        with private_services() as dep:
            busy0, total0 = cpu_jiffies()
            out = runner(
                run_rolling(
                    dep,
                    log_dir,
                    sessions=args.sessions,
                    seconds=args.seconds,
                    rate=args.rate,
                    window=args.window,
                    first_drain_after=args.first_drain_after,
                    concurrency=args.concurrency,
                    say=lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True),
                )
            )
            busy1, total1 = cpu_jiffies()
    busy_cores = (busy1 - busy0) / max(total1 - total0, 1) * cores
    figures = summarize(out)
    figures["machine_busy_cores"] = round(busy_cores, 2)
    figures["machine_cores"] = cores
    broken = failures(out)
    figures["failures"] = broken
    print()
    report(figures, busy_cores, cores)
    for line in broken:
        print(f"FAILED: {line}")
    line = json.dumps(figures)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
