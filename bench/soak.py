"""Soak run: many sessions, quotes and account saves for minutes, clients reconnecting.

Run: ``.venv/bin/python bench/soak.py`` (10 minutes; ``--duration 60`` for a
quick look). Needs Redis and PostgreSQL on loopback, like the tests.

It starts the demo under daphne on PostgreSQL + Redis (a database made for
the run), creates ``--logins`` users with one account each, and connects
``--sessions`` clients (two per login by default) with the ``websockets``
library, each subscribed to one of ``--symbols`` symbols. A publisher
process sends ``--quote-rate`` quotes per second over those symbols and a
saver process commits ``--save-rate`` balance saves per second on random
accounts, each in ``transaction.atomic()``. Every second, ``--reconnect-rate``
random clients drop their connection and reconnect with ``resume`` (their
last seen seq).

Printed at the end:
- account frames committed (per login, the seq the database reached, times
  the sessions of that login) against account frames delivered (distinct
  seqs each session received, live or replayed on resume), and how many
  sessions saw a gap or a duplicate; they must match with none;
- server memory (RSS) at the start and the end;
- p50/p99 publish-to-receipt latency of quotes, per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import cpu_seconds, rss_kb  # noqa: E402
from tests.servers import Deployment, deployment  # noqa: E402

SETUP = """
import json
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from rest_framework_simplejwt.tokens import AccessToken
from project.broker.models import Account, Balance
User = get_user_model()
password = make_password("soak")
users = User.objects.bulk_create(
    [User(username=f"soak{{i}}", password=password) for i in range({logins})]
)
users = list(User.objects.filter(username__startswith="soak").order_by("id"))
accounts = Account.objects.bulk_create(
    [Account(user=u, login=f"S{{i}}") for i, u in enumerate(users)]
)
Balance.objects.bulk_create([Balance(account=a, balance=0) for a in accounts])
tokens = {{f"S{{i}}": str(AccessToken.for_user(u)) for i, u in enumerate(users)}}
open({path!r}, "w").write(json.dumps(tokens))
"""

PUBLISHER = """
import random, time
from broker_ws import publish_quote
symbols = {symbols!r}
rate, end = {rate}, time.time() + {duration}
price = dict.fromkeys(symbols, 100.0)
next_at = time.time()
i = 0
while time.time() < end:
    s = symbols[i % len(symbols)]
    price[s] *= 1 + random.gauss(0, 0.0005)
    publish_quote(s, round(price[s], 5), round(price[s] + 0.01, 5))
    i += 1
    next_at += 1 / rate
    time.sleep(max(0, next_at - time.time()))
"""

SAVER = """
import random, time
from decimal import Decimal
from django.db import transaction
from project.broker.models import Balance
logins = {logins!r}
rate, end = {rate}, time.time() + {duration}
next_at = time.time()
while time.time() < end:
    with transaction.atomic():
        b = Balance.objects.select_for_update().get(account__login=random.choice(logins))
        b.balance = b.balance + Decimal("1.00")
        b.save()
    next_at += 1 / rate
    time.sleep(max(0, next_at - time.time()))
"""

FINAL_SEQS = """
import json
from broker_ws.models import LoginSequence
print("SEQS" + json.dumps(dict(LoginSequence.objects.filter(login__startswith="S")
                               .values_list("login", "seq"))))
"""


class Session:
    """One client: its login, symbol, the seqs it got, and its reconnects."""

    def __init__(self, login: str, token: str, symbol: str) -> None:
        self.login, self.token, self.symbol = login, token, symbol
        self.start_seq: int | None = None
        self.seqs: list[int] = []
        self.reconnects = 0
        self.ws: Any = None
        self.drop = asyncio.Event()

    @property
    def last(self) -> int | None:
        return self.seqs[-1] if self.seqs else self.start_seq


async def run_session(
    session: Session,
    url: str,
    latencies: dict[int, list[float]],
    stop: asyncio.Event,
    origin: list[float],
) -> None:
    while not stop.is_set():
        try:
            async with websockets.connect(url, max_queue=None, open_timeout=60) as ws:
                session.ws = ws
                hello: dict[str, Any] = {"authorization": session.token}
                if session.last is not None:
                    hello["resume"] = {session.login: session.last}
                await ws.send(json.dumps(hello))
                await ws.send(json.dumps({"event": "subscribe", "data": [session.symbol]}))
                session.drop.clear()
                # The quote sent with the `subscribed` reply is the symbol's last
                # one, however old: a snapshot, not a measure of delivery.
                snapshot_due = True
                drop = asyncio.ensure_future(session.drop.wait())
                while not stop.is_set():
                    recv = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait({recv, drop}, return_when="FIRST_COMPLETED")
                    if drop in done:
                        recv.cancel()
                        break
                    raw = recv.result()
                    now = time.time()
                    if raw[0] == "[":
                        frame = json.loads(raw)
                        if frame[0] == "t" and snapshot_due:
                            snapshot_due = False
                        elif frame[0] == "t" and origin:
                            latencies[int(now - origin[0]) // 60].append(now * 1000 - frame[4])
                        elif frame[0] == "b":
                            session.seqs.append(frame[2])
                    elif raw[0] == "{":
                        reply = json.loads(raw)
                        if reply["event"] == "subscribed":
                            snapshot_due = True
                        elif reply["event"] == "authorized" and session.start_seq is None:
                            session.start_seq = reply["data"]["seq"][session.login]
                        elif reply["event"] in ("resync", "error"):
                            print("unexpected reply:", raw, file=sys.stderr)
                drop.cancel()
        except (websockets.ConnectionClosed, OSError) as exc:
            print(f"{session.login}: connection lost ({exc!r}); reconnecting", file=sys.stderr)
            await asyncio.sleep(0.5)
        if not stop.is_set():
            session.reconnects += 1


async def soak(dep: Deployment, args: argparse.Namespace, work: Path) -> None:
    dep.env["BROKER_WS_JSON"] = json.dumps({"MAX_SESSIONS_PER_LOGIN": 100})
    tokens_path = work / "tokens.json"
    dep.shell(SETUP.format(logins=args.logins, path=str(tokens_path)))
    tokens: dict[str, str] = json.loads(tokens_path.read_text())
    host = dep.start_server("--no-feed")
    pid = dep.servers[-1].pid
    url = f"ws://{host}/"
    symbols = [f"SOAK{i}" for i in range(args.symbols)]
    logins = sorted(tokens)
    sessions = [
        Session(logins[i % len(logins)], tokens[logins[i % len(logins)]], symbols[i % len(symbols)])
        for i in range(args.sessions)
    ]
    latencies: dict[int, list[float]] = defaultdict(list)
    origin: list[float] = []  # when publishing started: minute 0 of the latencies
    stop = asyncio.Event()
    gate = asyncio.Semaphore(200)

    async def start(session: Session) -> asyncio.Task[None]:
        async with gate:
            task = asyncio.create_task(run_session(session, url, latencies, stop, origin))
            while session.start_seq is None:
                await asyncio.sleep(0.01)
            return task

    t0 = time.time()
    tasks = await asyncio.gather(*(start(s) for s in sessions))
    print(f"{len(sessions)} sessions connected in {time.time() - t0:.1f} s", flush=True)
    rss_start = rss_kb([pid])

    def spawn(code: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=dep.env
        )

    publisher = spawn(
        PUBLISHER.format(symbols=symbols, rate=args.quote_rate, duration=args.duration)
    )
    saver = spawn(SAVER.format(logins=logins, rate=args.save_rate, duration=args.duration))
    origin.append(time.time())
    end = origin[0] + args.duration
    # Per minute: server and soak-client CPU (% of one core), to tell which of
    # the two a latency spike came from.
    cpu: dict[int, tuple[float, float]] = {}
    minute_start = (time.time(), cpu_seconds([pid]), sum(os.times()[:2]))
    while time.time() < end:
        await asyncio.sleep(1)
        for session in random.sample(sessions, min(args.reconnect_rate, len(sessions))):
            session.drop.set()
        now = time.time()
        if int(now - origin[0]) // 60 != int(minute_start[0] - origin[0]) // 60 or now >= end:
            server, client = cpu_seconds([pid]), sum(os.times()[:2])
            span = now - minute_start[0]
            cpu[int(minute_start[0] - origin[0]) // 60] = (
                100 * (server - minute_start[1]) / span,
                100 * (client - minute_start[2]) / span,
            )
            minute_start = (now, server, client)
    # Not publisher.wait(): blocking the loop here would stall every client
    # while the publisher finishes its last second.
    await asyncio.to_thread(publisher.wait)
    await asyncio.to_thread(saver.wait)
    await asyncio.sleep(3)  # the last saves' frames reach their sessions
    rss_end = rss_kb([pid])
    stop.set()
    for session in sessions:
        session.drop.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    final = json.loads(dep.shell(FINAL_SEQS).split("SEQS", 1)[1])
    committed = delivered = gaps = duplicates = 0
    for session in sessions:
        start_seq = session.start_seq or 0
        want = final.get(session.login, 0) - start_seq
        got = session.seqs
        committed += want
        delivered += len(set(got))
        if len(got) != len(set(got)):
            duplicates += 1
        if got != list(range(start_seq + 1, start_seq + 1 + len(got))) or len(got) != want:
            gaps += 1
    print(
        f"\nsoak: {args.duration:.0f} s, {len(sessions)} sessions on {len(logins)} logins, "
        f"{args.quote_rate}/s quotes over {len(symbols)} symbols, {args.save_rate}/s saves, "
        f"{args.reconnect_rate} reconnects/s ({sum(s.reconnects for s in sessions)} in all)"
    )
    print(
        f"account frames committed x sessions: {committed}   delivered: {delivered}   "
        f"sessions with a gap: {gaps}   with a duplicate: {duplicates}"
    )
    print(f"server RSS: start {rss_start / 1024:.1f} MB, end {rss_end / 1024:.1f} MB")
    print("minute   quotes    p50 ms    p99 ms  server CPU %  soak client CPU %")
    for minute in sorted(latencies):
        values = sorted(latencies[minute])
        p99 = values[int(len(values) * 0.99) - 1] if values else float("nan")
        server_cpu, client_cpu = cpu.get(minute, (float("nan"), float("nan")))
        print(
            f"{minute:>6} {len(values):>8} {statistics.median(values):>9.1f} {p99:>9.1f}"
            f" {server_cpu:>13.0f} {client_cpu:>18.0f}"
        )
    if committed != delivered or gaps or duplicates:
        raise SystemExit("FAILED: account frames lost, repeated or out of order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--quote-rate", type=float, default=50)
    parser.add_argument("--save-rate", type=float, default=20)
    parser.add_argument("--reconnect-rate", type=int, default=2, help="clients dropped per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, deployment("redis", Path(tmp)) as dep:
        asyncio.run(soak(dep, args, Path(tmp)))


if __name__ == "__main__":
    main()
