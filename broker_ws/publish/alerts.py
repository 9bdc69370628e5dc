"""The optional price-alert engine: armed alerts checked against every published quote.

Enabled by ``BROKER_WS["PRICE_ALERTS"]`` (see docs/settings.md), it runs in
every process that publishes quotes. Each process keeps the armed alerts in
memory, per symbol, as two price-sorted lists: "above" alerts fire when the
bid reaches their price, "below" alerts when the ask falls to theirs. A quote
therefore costs two binary searches, whatever the number of alerts; only the
alerts it fires are touched.

Firing is a model save, done off the publishing path by one worker thread:
the alert is re-read with ``SELECT ... FOR UPDATE`` among the *armed* alerts
and saved with the configured "triggered" values, so its ``a`` frame follows
by the normal binding path. Two publisher processes seeing the same quote
both try; the database lets exactly one find the alert still armed.

The in-memory index follows saves of the alert model in this process at
once, and is reloaded from the database every ``refresh`` seconds for
alerts created or cancelled elsewhere.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import close_old_connections, connections, models, transaction
from django.db.models.signals import post_save
from django.utils import timezone

from broker_ws.conf import conf

logger = logging.getLogger(__name__)


@dataclass
class SymbolAlerts:
    """Armed alerts of one symbol: ``(price, pk)`` pairs sorted by price."""

    above: list[tuple[float, Any]] = field(default_factory=list)
    below: list[tuple[float, Any]] = field(default_factory=list)

    def fire(self, bid: float, ask: float) -> list[Any]:
        """Remove and return the pks of the alerts this quote fires."""
        fired: list[Any] = []
        if self.above and self.above[0][0] <= bid:
            cut = bisect.bisect_right(self.above, (bid, _MAX_KEY))
            fired.extend(pk for _, pk in self.above[:cut])
            del self.above[:cut]
        if self.below and self.below[-1][0] >= ask:
            cut = bisect.bisect_left(self.below, (ask, _MIN_KEY))
            fired.extend(pk for _, pk in self.below[cut:])
            del self.below[cut:]
        return fired


class _Extreme:
    """Sorts after (or before) every primary key, so bisect can split on price alone."""

    def __init__(self, sign: int) -> None:
        self.sign = sign

    def __lt__(self, other: object) -> bool:
        return self.sign < 0

    def __gt__(self, other: object) -> bool:
        return self.sign > 0


_MAX_KEY = _Extreme(+1)
_MIN_KEY = _Extreme(-1)


@dataclass(frozen=True)
class AlertConfig:
    """``BROKER_WS["PRICE_ALERTS"]`` with its defaults."""

    model: type[models.Model]
    symbol: str = "symbol"
    price: str = "price"
    condition: str = "condition"
    above: str = "above"
    below: str = "below"
    armed: dict[str, Any] = field(default_factory=lambda: {"status": "active"})
    triggered: dict[str, Any] = field(default_factory=lambda: {"status": "triggered"})
    triggered_at: str | None = "triggered_at"
    refresh: float = 5.0

    @classmethod
    def from_settings(cls, value: dict[str, Any]) -> AlertConfig:
        options = dict(value)
        return cls(model=apps.get_model(options.pop("model")), **options)

    def is_armed(self, instance: models.Model) -> bool:
        return all(getattr(instance, name) == wanted for name, wanted in self.armed.items())


class AlertEngine:
    """The armed alerts of one process and the worker that fires them."""

    def __init__(self, config: AlertConfig) -> None:
        self.config = config
        self.index: dict[str, SymbolAlerts] = {}
        self._symbol_of: dict[Any, str] = {}  # pk -> the symbol it is indexed under
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._loading = False
        self._fire_queue: queue.Queue[Any] = queue.Queue()
        self._in_flight: set[Any] = set()
        threading.Thread(target=self._fire_forever, name="broker_ws-alerts", daemon=True).start()

    # --- the quote path --------------------------------------------------
    def on_quote(self, symbol: str, bid: float, ask: float) -> None:
        """Fire the alerts of ``symbol`` this quote reaches (cheap; never blocks on I/O)."""
        if time.monotonic() - self._loaded_at > self.config.refresh and not self._loading:
            self._start_reload()
        with self._lock:
            alerts = self.index.get(symbol)
            fired = alerts.fire(bid, ask) if alerts is not None else []
            fired = [pk for pk in fired if pk not in self._in_flight]
            self._in_flight.update(fired)
        for pk in fired:
            self._fire_queue.put(pk)

    # --- the index ---------------------------------------------------------
    def load(self) -> None:
        """Read every armed alert from the database and replace the index."""
        c = self.config
        rows = c.model._default_manager.filter(**c.armed).values_list(
            "pk", c.symbol, c.price, c.condition
        )
        index: dict[str, SymbolAlerts] = {}
        symbol_of: dict[Any, str] = {}
        for pk, symbol, price, condition in rows.iterator(chunk_size=5000):
            side = _side(c, condition)
            if side is not None and price is not None:
                getattr(index.setdefault(symbol, SymbolAlerts()), side).append((float(price), pk))
                symbol_of[pk] = symbol
        for alerts in index.values():
            alerts.above.sort()
            alerts.below.sort()
        with self._lock:
            for alerts in index.values():  # firing meanwhile: do not fire twice
                alerts.above = [a for a in alerts.above if a[1] not in self._in_flight]
                alerts.below = [a for a in alerts.below if a[1] not in self._in_flight]
            self.index, self._symbol_of = index, symbol_of
            self._loaded_at = time.monotonic()

    def _start_reload(self) -> None:
        if self._loading:
            return
        self._loading = True
        self._loaded_at = time.monotonic()  # no second reload while this one runs

        def reload() -> None:
            try:
                self.load()
            except Exception as exc:
                logger.warning("broker_ws: reloading price alerts failed (%s)", exc)
            finally:
                self._loading = False
                connections.close_all()  # this thread ends: its connection must not linger

        threading.Thread(target=reload, name="broker_ws-alerts-load", daemon=True).start()

    def saved(self, instance: models.Model) -> None:
        """Follow a save of the alert model made in this process."""
        c = self.config
        pk = instance.pk
        symbol = getattr(instance, c.symbol)
        with self._lock:
            alerts = self.index.get(self._symbol_of.pop(pk, symbol))
            if alerts is not None:
                alerts.above = [a for a in alerts.above if a[1] != pk]
                alerts.below = [a for a in alerts.below if a[1] != pk]
            side = _side(c, getattr(instance, c.condition))
            price = getattr(instance, c.price)
            if c.is_armed(instance) and side is not None and price is not None:
                entries = getattr(self.index.setdefault(symbol, SymbolAlerts()), side)
                bisect.insort(entries, (float(price), pk))
                self._symbol_of[pk] = symbol

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every fired alert is saved (a one-shot publisher calls this
        before exiting); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self._in_flight or not self._fire_queue.empty():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # --- firing ------------------------------------------------------------
    def _fire_forever(self) -> None:
        while True:
            pk = self._fire_queue.get()
            try:
                fire_alert(self.config, pk)
            except Exception as exc:
                logger.warning("broker_ws: firing price alert %s failed (%s)", pk, exc)
            finally:
                with self._lock:
                    self._in_flight.discard(pk)
                close_old_connections()


def _side(config: AlertConfig, condition: Any) -> str | None:
    if condition == config.above:
        return "above"
    if condition == config.below:
        return "below"
    return None


def fire_alert(config: AlertConfig, pk: Any) -> bool:
    """Save alert ``pk`` as triggered if it is still armed; True if this call did it."""
    with transaction.atomic():
        alert = (
            config.model._default_manager.select_for_update().filter(pk=pk, **config.armed).first()
        )
        if alert is None:
            return False  # cancelled, or fired by another process
        for name, value in config.triggered.items():
            setattr(alert, name, value)
        if config.triggered_at:
            setattr(alert, config.triggered_at, timezone.now())
        alert.save()
    return True


_engine: AlertEngine | None = None
_engine_settings: Any = None
_engine_lock = threading.Lock()


def get_engine() -> AlertEngine | None:
    """The engine of this process for the current settings; None when alerts are off."""
    global _engine, _engine_settings
    value = conf.PRICE_ALERTS
    if not value:
        return None
    if _engine is not None and _engine_settings == value:
        return _engine
    with _engine_lock:
        if _engine is None or _engine_settings != value:
            engine = AlertEngine(AlertConfig.from_settings(value))
            post_save.connect(
                _follow_save, sender=engine.config.model, dispatch_uid="broker_ws:alerts"
            )
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                engine.load()  # a plain thread: the first quote already counts
            else:
                # In an event loop the ORM must not be called: load in the
                # background. Until then nothing fires, and the next quote
                # that still crosses an alert fires it.
                engine._start_reload()
            _engine, _engine_settings = engine, value
    return _engine


def _follow_save(sender: Any, instance: models.Model, **kwargs: Any) -> None:
    if _engine is not None and not kwargs.get("raw"):
        engine = _engine
        transaction.on_commit(lambda: engine.saved(instance), robust=True)


def check_quote(symbol: str, bid: float, ask: float) -> None:
    """Called for every published quote: fire what it reaches, if alerts are on."""
    engine = get_engine()
    if engine is not None:
        engine.on_quote(symbol, bid, ask)


__all__ = ["AlertConfig", "AlertEngine", "check_quote", "fire_alert", "get_engine"]
