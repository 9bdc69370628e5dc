"""Publisher and saver processes of the fan-out benchmark.

Sets up, prints ``PUBREADY {}``, waits for ``GO start t0 t1 end`` (epoch
s) on stdin, then publishes at a fixed rate from ``start`` until ``end``,
each message the way its server expects it. With ``--steps`` it then waits
for the next ``GO start t0 t1 end [rate]`` (until EOF), the message
sequence continuing: the scaling scenario steps the quote rate up with one
publisher process, without a Django set-up per step.

quotes (``--kind quotes``), round-robin over ``--symbols``:
  * broker_ws / broker_ws_uvicorn: ``broker_ws.publish_quote(symbol, bid, ask, ts)``
    in a Django-configured process (the public API);
  * naive: ``async_to_sync(get_channel_layer().group_send)(group, {...})``;
  * plain: one Redis ``PUBLISH`` of the frame, encoded once here.
  ``bid`` = the symbol's quote sequence number (1, 2, ...), ``ask`` = the
  publish time in epoch seconds (microsecond resolution), ``ts_ms`` = the
  same time in ms.

balance saves (``--kind saves``), round-robin over the bench logins, every
one committed to the same SQLite database whatever the server:
  * broker_ws: ``Balance.save()`` inside ``transaction.atomic()`` (the
    binding records the frame in the outbox; it is published on commit);
  * naive: the same row updated inside ``transaction.atomic()``, then
    ``group_send`` to the login's group from ``transaction.on_commit`` (what
    a Django developer writes first);
  * plain: the same update, then ``PUBLISH`` on the login's channel on commit.
  The baselines update the row with ``QuerySet.update()`` so that broker_ws's
  binding (a ``post_save`` receiver) does not run for them.
  ``equity`` = the time the save started, epoch ms with two decimals.

Prints one line ``RESULT {json}``: per-symbol / per-login counts inside
the window ``[t0, t1)`` and in total, the achieved rate, the lag behind
schedule and the duration of one publish (or save + commit) call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOGIN_BASE = 700000


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def quote_publisher(server: str, redis_url: str) -> Callable[[str, int, float], None]:
    if server.startswith("broker_ws"):
        import django

        django.setup()
        import broker_ws

        publish_quote = broker_ws.publish_quote

        def publish(symbol: str, seq: int, t: float) -> None:
            publish_quote(symbol, seq, t, ts=int(t * 1000))

        return publish
    if server == "naive":
        import django

        django.setup()
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        from bench.naive.consumer import quote_channel

        layer = get_channel_layer()

        def publish(symbol: str, seq: int, t: float) -> None:
            async_to_sync(layer.group_send)(
                quote_channel(symbol),
                {
                    "type": "quote.message",
                    "symbol": symbol,
                    "bid": seq,
                    "ask": t,
                    "ts": int(t * 1000),
                },
            )

        return publish
    import orjson
    import redis

    client = redis.Redis.from_url(redis_url)

    def publish(symbol: str, seq: int, t: float) -> None:
        client.publish(f"bench.q.{symbol}", orjson.dumps(["t", symbol, seq, t, int(t * 1000)]))

    return publish


def balance_saver(
    server: str, redis_url: str, logins: list[str]
) -> Callable[[str, int, float], None]:
    """``save(login, n, t)``: the n-th save of ``login``, started at ``t``."""
    import django

    django.setup()
    from django.db import transaction

    balances = balances_of(logins)
    if server.startswith("broker_ws"):

        def save(login: str, n: int, t: float) -> None:
            balance = balances[login]
            balance.equity = equity_at(t)
            balance.balance = Decimal(10000 + n)
            with transaction.atomic():
                balance.save()

        return save

    def frame(login: str, n: int, t: float) -> list[Any]:
        ms = int(t * 100_000) / 100
        return ["b", login, n, "USD", 10000 + n, ms, 0.0, 10000.0, int(t * 1000)]

    if server == "naive":
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        from bench.naive.consumer import login_channel

        layer = get_channel_layer()

        def deliver(login: str, n: int, t: float) -> None:
            async_to_sync(layer.group_send)(
                login_channel(login), {"type": "balance.message", "frame": frame(login, n, t)}
            )

        return committed_update(balances, deliver)
    import orjson
    import redis

    client = redis.Redis.from_url(redis_url)

    def deliver(login: str, n: int, t: float) -> None:
        client.publish(f"bench.l.{login}", orjson.dumps(frame(login, n, t)))

    return committed_update(balances, deliver)


def balances_of(logins: list[str]) -> dict[str, Any]:
    """The bench logins' Balance rows, by login (Django is set up)."""
    from project.broker.models import Balance

    rows = Balance.objects.select_related("account").filter(account__login__in=logins)
    balances = {balance.account.login: balance for balance in rows}
    missing = set(logins) - set(balances)
    if missing:
        raise SystemExit(f"no Balance row for logins {sorted(missing)[:5]}...")
    return balances


def equity_at(t: float) -> Decimal:
    """The save's start time as the ``equity`` the frame carries: epoch ms, 2 decimals."""
    return Decimal(int(t * 100_000)) / 100


def committed_update(
    balances: dict[str, Any], deliver: Callable[[str, int, float], None]
) -> Callable[[str, int, float], None]:
    """A baseline's save: the login's Balance row updated in a transaction (the
    same row and database broker_ws's saver writes), then ``deliver`` on commit.

    ``QuerySet.update()`` sends no ``post_save``, so broker_ws's binding does
    not record or publish anything for the baselines.
    """
    from django.db import transaction
    from django.utils import timezone

    from project.broker.models import Balance

    def save(login: str, n: int, t: float) -> None:
        with transaction.atomic():
            Balance.objects.filter(pk=balances[login].pk).update(
                equity=equity_at(t), balance=Decimal(10000 + n), updated_at=timezone.now()
            )
            transaction.on_commit(lambda: deliver(login, n, t))

    return save


def publish_round(
    action: Callable[[str, int, float], None],
    keys: list[str],
    total: dict[str, int],
    start: float,
    t0: float,
    t1: float,
    end: float,
    rate: float,
) -> dict[str, Any]:
    """Publish at ``rate`` from ``start`` until ``end``; count what falls in ``[t0, t1)``.

    ``total`` (key -> messages so far) is updated in place and numbers the
    messages, so that in ``--steps`` mode a key's sequence goes on rising
    from one round to the next (the load generator, whose sessions stay
    connected, checks it for gaps and duplicates across rounds too).
    """
    window: dict[str, int] = dict.fromkeys(keys, 0)
    durations: list[float] = []
    lags: list[float] = []
    late_start = max(0.0, time.time() - start)
    interval = 1.0 / rate
    k = 0
    first = last = None
    while True:
        due = start + k * interval
        now = time.time()
        if due >= end or now >= end:
            break
        if due > now:
            time.sleep(due - now)
        key = keys[k % len(keys)]
        n = total.get(key, 0) + 1
        t = time.time()
        action(key, n, t)
        done = time.time()
        total[key] = n
        if t0 <= t < t1:
            window[key] += 1
        durations.append((done - t) * 1000.0)
        lags.append((t - due) * 1000.0)
        first = first if first is not None else t
        last = t
        k += 1
    published = k
    span = (last - first) if first is not None and last is not None and last > first else 0.0
    times = os.times()
    return {
        "published": published,
        "in_window": sum(window.values()),
        "window": window,
        "total": dict(total),
        "rate": (published - 1) / span if span else None,
        "late_start_s": late_start,
        "lag_p99_ms": percentile(lags, 0.99),
        "lag_max_ms": max(lags) if lags else None,
        "call_p50_ms": percentile(durations, 0.5),
        "call_p99_ms": percentile(durations, 0.99),
        "cpu_s": times.user + times.system,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--kind", choices=["quotes", "saves"], required=True)
    parser.add_argument("--symbols", default="")
    parser.add_argument("--logins", type=int, default=500)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="after a RESULT, wait for the next GO (optionally with its own rate) until EOF",
    )
    args = parser.parse_args()

    if args.kind == "quotes":
        keys = [s for s in args.symbols.split(",") if s]
        action = quote_publisher(args.server, args.redis)
    else:
        keys = [str(LOGIN_BASE + i) for i in range(args.logins)]
        action = balance_saver(args.server, args.redis, keys)

    # Ready: wait for "GO start t0 t1 end" (epoch s) on stdin.
    print("PUBREADY {}", flush=True)
    total: dict[str, int] = {}
    while True:
        line = sys.stdin.readline().split()
        if not line or line[0] != "GO":
            return
        start, t0, t1, end = (float(x) for x in line[1:5])
        rate = float(line[5]) if len(line) > 5 else args.rate
        result = publish_round(action, keys, total, start, t0, t1, end, rate)
        print("RESULT " + json.dumps(result), flush=True)
        if not args.steps:
            return


if __name__ == "__main__":
    main()
