"""Keeping the garbage collector's full passes off the live sessions.

A full collection stops the process for as long as it takes to walk every
object the collector tracks, and what a server process allocates after start-up
is mostly its sessions: about 100 tracked objects each, so a full pass over
2000 sessions held the event loop for 100-200 ms, several times during a
reconnect storm and again at some moment after it (bench/storm.py). Nothing in
a live session is garbage, so walking it finds nothing.

So, once sessions have been accepted or authorized ``GC_FREEZE_EVERY`` times
since the last time,
the process runs a full collection (it walks only what is not frozen yet: the
objects of those sessions and whatever else is new, a few milliseconds) and
then :func:`gc.freeze` moves everything that survived out of the collector's
sight. A frozen object is still freed by reference counting, and a closed
session is (under daphne, :func:`broker_ws.direct_write.release_when_forgotten`
and :func:`~broker_ws.direct_write.release_upgrade_requests` break the cycles
its server keeps), but a frozen object that dies in a reference cycle stays
until the next reclaim: every ``GC_RECLAIM_INTERVAL`` seconds the process
unfreezes, runs one full collection over everything (the pause this module
otherwise avoids, once per interval instead of every few seconds under load)
and freezes again. ``GC_FREEZE_EVERY = 0`` leaves the collector alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from broker_ws.conf import conf

logger = logging.getLogger(__name__)

#: Seconds without a new session after which what the last ones left is frozen.
SETTLE = 1.0


class Collector:
    """The freeze schedule of one server process."""

    def __init__(self) -> None:
        self.opened_since_freeze = 0
        self.freezes = 0
        self.reclaims = 0
        self._scheduled = False
        self._last_opened = 0.0
        self._settle: asyncio.TimerHandle | None = None
        self._reclaim: asyncio.TimerHandle | None = None
        self._frozen_by_us = False

    def session_event(self) -> None:
        """Count a session accepted or authorized (each allocates what it keeps);
        freeze at the next turn of the loop once
        ``GC_FREEZE_EVERY`` have been counted, or once :data:`SETTLE` seconds have
        passed without one (what the last sessions of a storm left)."""
        every = conf.GC_FREEZE_EVERY
        if every <= 0:
            return
        self.opened_since_freeze += 1
        loop = asyncio.get_running_loop()
        self._last_opened = loop.time()
        if self.opened_since_freeze >= every and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.freeze)
        if self._settle is None:
            self._settle = loop.call_later(SETTLE, self._freeze_when_settled)
        if self._reclaim is None and conf.GC_RECLAIM_INTERVAL > 0:
            self._reclaim = loop.call_later(conf.GC_RECLAIM_INTERVAL, self.reclaim)

    def _freeze_when_settled(self) -> None:
        self._settle = None
        if self.opened_since_freeze == 0:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_opened
        if quiet >= SETTLE:
            self.freeze()
        else:
            self._settle = loop.call_later(SETTLE - quiet, self._freeze_when_settled)

    def freeze(self) -> float:
        """Collect what is not frozen, then freeze what survived; the pause in ms."""
        self._scheduled = False
        self.opened_since_freeze = 0
        started = time.perf_counter()
        unfrozen = gc.get_count()
        gc.collect()
        gc.freeze()
        self._frozen_by_us = True
        self.freezes += 1
        pause = (time.perf_counter() - started) * 1000.0
        logger.debug("broker_ws: froze the collector's view (%.1f ms, %s)", pause, unfrozen)
        return pause

    def reclaim(self) -> float:
        """Unfreeze, collect everything, freeze again; the pause in ms."""
        self._reclaim = None
        started = time.perf_counter()
        if self._frozen_by_us:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.reclaims += 1
        pause = (time.perf_counter() - started) * 1000.0
        logger.info("broker_ws: reclaimed frozen garbage (full collection, %.1f ms)", pause)
        if conf.GC_RECLAIM_INTERVAL > 0 and conf.GC_FREEZE_EVERY > 0:
            loop = asyncio.get_running_loop()
            self._reclaim = loop.call_later(conf.GC_RECLAIM_INTERVAL, self.reclaim)
        return pause


_collector: Collector | None = None


def get_collector() -> Collector:
    """The collector schedule of this process."""
    global _collector
    if _collector is None:
        _collector = Collector()
    return _collector
