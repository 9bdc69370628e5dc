"""A random-walk quote feed, for demos, load tests and smoke checks.

Not a market: each symbol's mid price takes a small Gaussian step per tick
with a fixed spread. It publishes through the public API, exactly as a
broker's own feed adapter would.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker_ws.publish.api import publish_quote

logger = logging.getLogger(__name__)

DEFAULT_SYMBOLS: dict[str, float] = {
    "EURUSD": 1.0850,
    "GBPUSD": 1.2700,
    "USDJPY": 151.20,
    "BTCUSD": 64000.0,
    "XAUUSD": 2350.0,
    "US 500": 5200.0,
}


@dataclass
class RandomWalk:
    """Mid prices per symbol, stepped one tick at a time."""

    prices: dict[str, float]
    volatility: float = 0.0002
    spread: float = 0.0001

    def __post_init__(self) -> None:
        self.rng = random.Random()
        self.digits = {s: (2 if p >= 100 else 5) for s, p in self.prices.items()}

    def tick(self, symbol: str) -> tuple[float, float]:
        """Step ``symbol`` and return its ``(bid, ask)``."""
        mid = self.prices[symbol] * (1 + self.rng.gauss(0, self.volatility))
        self.prices[symbol] = mid
        half = mid * self.spread / 2
        digits = self.digits[symbol]
        bid = round(mid - half, digits)
        # Rounded to ``digits``, a spread narrower than one tick (0.01 near a
        # price of 100) can vanish: keep the ask at least a tick above the bid.
        ask = max(round(mid + half, digits), round(bid + 10**-digits, digits))
        return bid, ask


def run_feed(
    symbols: Sequence[str] | None = None,
    rate: float = 10.0,
    duration: float | None = None,
    stop: threading.Event | None = None,
    publish: Callable[[str, float, float], None] = publish_quote,
) -> int:
    """Publish ``rate`` quotes per second in total, round-robin over ``symbols``.

    Runs until ``duration`` seconds have passed or ``stop`` is set; returns
    the number of quotes published. Errors from the bus (Redis restarting)
    are retried on the next tick rather than ending the feed.
    """
    chosen = list(symbols) if symbols else list(DEFAULT_SYMBOLS)
    walk = RandomWalk({s: DEFAULT_SYMBOLS.get(s, 100.0) for s in chosen})
    stop = stop or threading.Event()
    interval = 1.0 / rate
    started = time.monotonic()
    next_at = started
    sent = 0
    while not stop.is_set():
        if duration is not None and time.monotonic() - started >= duration:
            break
        symbol = chosen[sent % len(chosen)]
        bid, ask = walk.tick(symbol)
        try:
            publish(symbol, bid, ask)
        except Exception as exc:  # keep ticking through a bus outage
            logger.warning("broker_ws feed: publish failed: %s", exc)
        else:
            sent += 1
        next_at += interval
        stop.wait(max(next_at - time.monotonic(), 0.0))
    return sent
