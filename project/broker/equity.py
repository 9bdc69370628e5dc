"""The demo's live equity: state ``e`` of every account with open trades, per quote.

Equity, margin and floating P/L move with every quote of an open trade's
symbol; the demo publishes them with :func:`broker_ws.publish_state` (marker
``e``, declared in ``BROKER_WS['STATE_MARKERS']``: equity, margin,
free_margin, margin_level, floating_pl) and never saves them.

Cheap by design, since it runs on every quote of the feed: the open trades
and balances are read from the database at most once a second (and at the
next quote after a trade or balance of this process is saved), never per
quote; a quote costs arithmetic over the trades of its symbol's accounts and
one publish per such account.

A demo's arithmetic, not a broker's: the contract size is 100,000 for
currency pairs, 100 for gold and 1 otherwise; P/L and margin of a pair quoted
in another currency than USD (``USDJPY``) are converted at the current price;
margin is the notional at the open price over :data:`LEVERAGE`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from django.db.models.signals import post_delete, post_save

import broker_ws

logger = logging.getLogger(__name__)

LEVERAGE = 100.0
#: Seconds between two reads of the open trades and balances.
REFRESH = 1.0
MARKER = "e"


def contract_size(symbol: str) -> float:
    if symbol.startswith("XAU"):
        return 100.0
    if len(symbol) == 6 and symbol.isalpha() and not symbol.startswith("BTC"):
        return 100_000.0
    return 1.0


@dataclass(frozen=True, slots=True)
class OpenTrade:
    login: str
    symbol: str
    buy: bool
    volume: float
    open_price: float


class EquityBook:
    """Open trades and balances, cached; the state of their accounts, per quote."""

    def __init__(self, publish: Callable[..., None] = broker_ws.publish_state) -> None:
        self._publish = publish
        self._lock = threading.Lock()
        self._trades_by_login: dict[str, list[OpenTrade]] = {}
        self._logins_by_symbol: dict[str, set[str]] = {}
        self._balances: dict[str, float] = {}
        self._prices: dict[str, tuple[float, float]] = {}  # symbol -> (bid, ask)
        self._read_at = float("-inf")
        self._stale = True
        for model in ("broker.Trade", "broker.Balance"):
            post_save.connect(self._changed, sender=model, weak=False)
            post_delete.connect(self._changed, sender=model, weak=False)

    def close(self) -> None:
        """Stop listening to saves."""
        for model in ("broker.Trade", "broker.Balance"):
            post_save.disconnect(self._changed, sender=model)
            post_delete.disconnect(self._changed, sender=model)

    def _changed(self, **kwargs: object) -> None:
        self._stale = True  # read again at the next quote

    def _refresh(self) -> None:
        from project.broker.models import Balance, Trade

        self._stale = False
        self._read_at = time.monotonic()
        trades: dict[str, list[OpenTrade]] = defaultdict(list)
        by_symbol: dict[str, set[str]] = defaultdict(set)
        rows = Trade.objects.filter(status=Trade.Status.OPEN).values_list(
            "account__login", "symbol", "side", "volume", "open_price"
        )
        for login, symbol, side, volume, open_price in rows:
            trade = OpenTrade(login, symbol, side == "buy", float(volume), float(open_price))
            trades[login].append(trade)
            by_symbol[symbol].add(login)
        balances = dict(
            Balance.objects.filter(account__login__in=list(trades)).values_list(
                "account__login", "balance"
            )
        )
        with self._lock:
            self._trades_by_login = dict(trades)
            self._logins_by_symbol = dict(by_symbol)
            self._balances = {login: float(value) for login, value in balances.items()}

    def on_quote(self, symbol: str, bid: float, ask: float) -> None:
        """Publish the state of every account with an open trade of ``symbol``."""
        self._prices[symbol] = (bid, ask)
        if self._stale or time.monotonic() - self._read_at >= REFRESH:
            self._refresh()
        with self._lock:
            logins = list(self._logins_by_symbol.get(symbol, ()))
            states = [(login, self.state(login)) for login in logins]
        for login, fields in states:
            self._publish(login, MARKER, fields)

    def state(self, login: str) -> list[float | None]:
        """``[equity, margin, free_margin, margin_level, floating_pl]`` of ``login``
        (margin level in %, None without margin)."""
        floating = margin = 0.0
        for trade in self._trades_by_login.get(login, ()):
            size = trade.volume * contract_size(trade.symbol)
            bid, ask = self._prices.get(trade.symbol, (trade.open_price, trade.open_price))
            close = bid if trade.buy else ask
            profit = (close - trade.open_price) * size * (1 if trade.buy else -1)
            notional = size * trade.open_price
            if trade.symbol.startswith("USD") and len(trade.symbol) == 6:
                profit /= close  # in the quote currency: to USD at the current price
                notional = size
            floating += profit
            margin += notional / LEVERAGE
        equity = self._balances.get(login, 0.0) + floating
        level = round(100.0 * equity / margin, 2) if margin else None
        return [
            round(equity, 2),
            round(margin, 2),
            round(equity - margin, 2),
            level,
            round(floating, 2),
        ]


def quote_and_equity(book: EquityBook) -> Callable[[str, float, float], None]:
    """A publish function for :func:`broker_ws.publish.feed.run_feed`: the quote, then
    the state of the accounts it moves (a failure there is logged, the feed goes on)."""

    def publish(symbol: str, bid: float, ask: float) -> None:
        broker_ws.publish_quote(symbol, bid, ask)
        try:
            book.on_quote(symbol, bid, ask)
        except Exception as exc:
            logger.warning("demo equity: could not update the accounts of %s: %s", symbol, exc)

    return publish
