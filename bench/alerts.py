"""Cost per quote of the price-alert engine as the number of armed alerts grows.

Run: ``.venv/bin/python bench/alerts.py`` (about a minute). It makes a
throw-away SQLite database with the demo's models, arms N alerts spread
over 100 symbols (N = 1,000, 10,000, 100,000), loads broker_ws's engine
and times ``on_quote`` over a random walk of quotes, against two baselines
a developer might write first: scanning the symbol's alerts in Python, and
one database query per quote. Thresholds lie 1-10% from the price and the
walk stays within 1%, as in a calm market, so few alerts fire. The timed
call is the real ``on_quote`` (lock, reload check, two binary searches);
only the firing itself (a model save per fired alert, in a worker thread)
is replaced by a counter: it costs the same whatever N is, and the stream
tests cover it.

Prints microseconds per quote and the engine's growth from 1k to 100k alerts.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="bws-alerts-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
os.environ["DATABASE_URL"] = f"sqlite:///{TMP / 'alerts.sqlite3'}"
os.environ.pop("REDIS_URL", None)

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from broker_ws.publish.alerts import AlertConfig, AlertEngine  # noqa: E402
from project.broker.models import Account, PriceAlert  # noqa: E402

SYMBOLS = [f"SYM{i:03d}" for i in range(100)]
QUOTES = 20_000
SIZES = (1_000, 10_000, 100_000)


def arm(count: int, rng: random.Random) -> None:
    """Replace every alert by ``count`` armed ones around price 100."""
    PriceAlert.objects.all().delete()
    account = Account.objects.first()
    batch = []
    for i in range(count):
        above = i % 2 == 0
        # Thresholds 1-10% away from 100: a walk of +-1% rarely crosses one.
        offset = rng.uniform(1, 10)
        batch.append(
            PriceAlert(
                account=account,
                symbol=SYMBOLS[i % len(SYMBOLS)],
                condition="above" if above else "below",
                price=Decimal(f"{100 + offset if above else 100 - offset:.4f}"),
            )
        )
    PriceAlert.objects.bulk_create(batch, batch_size=5000)  # no signals: no frames


def walk(rng: random.Random) -> list[tuple[str, float, float]]:
    prices = dict.fromkeys(SYMBOLS, 100.0)
    quotes = []
    for i in range(QUOTES):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        prices[symbol] = min(max(prices[symbol] * (1 + rng.gauss(0, 0.002)), 99.0), 101.0)
        bid = prices[symbol]
        quotes.append((symbol, bid, bid + 0.01))
    return quotes


class Sink:
    """Stands in for the firing queue: counts the alerts a quote fires."""

    def __init__(self) -> None:
        self.count = 0

    def put(self, pk: object) -> None:
        self.count += 1


def scan_baseline(config: AlertConfig) -> dict[str, list[tuple[str, float]]]:
    rows = PriceAlert.objects.filter(status="active").values_list("symbol", "condition", "price")
    by_symbol: dict[str, list[tuple[str, float]]] = {}
    for symbol, condition, price in rows:
        by_symbol.setdefault(symbol, []).append((condition, float(price)))
    return by_symbol


def time_per_quote(check, quotes) -> float:
    started = time.perf_counter()
    for symbol, bid, ask in quotes:
        check(symbol, bid, ask)
    return (time.perf_counter() - started) / len(quotes) * 1e6


def main() -> None:
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password="x")
    Account.objects.create(user=user, login="1")
    config = AlertConfig.from_settings({"model": "broker.PriceAlert", "refresh": 1e9})
    rng = random.Random(7)
    quotes = walk(rng)
    print(f"{QUOTES} quotes over {len(SYMBOLS)} symbols; microseconds per quote (median of 3)")
    print(f"{'alerts':>8} {'engine':>9} {'scan':>9} {'db query':>9} {'load s':>7} {'fired':>6}")
    results = {}
    for size in SIZES:
        arm(size, rng)
        engine_times, fired = [], 0
        for _ in range(3):
            engine = AlertEngine(config)
            sink = Sink()
            engine._fire_queue = sink  # type: ignore[assignment]
            started = time.perf_counter()
            engine.load()
            load = time.perf_counter() - started
            engine_times.append(time_per_quote(engine.on_quote, quotes))
            fired = sink.count
        table = scan_baseline(config)

        def scan(symbol: str, bid: float, ask: float, table=table) -> None:
            for condition, price in table.get(symbol, ()):
                if (condition == "above" and bid >= price) or (
                    condition == "below" and ask <= price
                ):
                    pass

        scan_us = statistics.median(time_per_quote(scan, quotes) for _ in range(3))

        def query(symbol: str, bid: float, ask: float) -> None:
            list(
                PriceAlert.objects.filter(
                    symbol=symbol, status="active", condition="above", price__lte=bid
                ).values_list("pk")
            )

        db_us = time_per_quote(query, quotes[:2000])
        results[size] = statistics.median(engine_times)
        print(
            f"{size:>8} {results[size]:>9.2f} {scan_us:>9.1f} {db_us:>9.1f} {load:>7.2f} {fired:>6}"
        )
    growth = results[SIZES[-1]] / results[SIZES[0]]
    print(
        f"engine cost grows {growth:.2f}x from {SIZES[0]:,} to {SIZES[-1]:,} alerts "
        f"({SIZES[-1] // SIZES[0]}x more); linear would be {SIZES[-1] // SIZES[0]}x"
    )


if __name__ == "__main__":
    main()
