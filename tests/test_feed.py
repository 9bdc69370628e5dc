"""The demo's random-walk feed."""

from __future__ import annotations

from broker_ws.publish.feed import RandomWalk


def test_every_tick_has_the_ask_above_the_bid_even_where_the_spread_is_under_a_tick() -> None:
    """Near 100 the spread (0.01 %) is one cent, which rounding to 2 digits used to
    erase now and then (bid == ask); with 5 digits it is always visible."""
    walk = RandomWalk({"EUR/USD": 100.0, "EURUSD": 1.085, "BTCUSD": 64000.0})
    for symbol in walk.prices:
        for _ in range(5000):
            bid, ask = walk.tick(symbol)
            assert bid < ask, (symbol, bid, ask)
