"""Keeping the garbage collector's full passes off the live sessions.

A full collection stops the process for as long as it takes to walk every
object the collector tracks, and what a server process allocates after start-up
is mostly its sessions: about 100 tracked objects each, so a full pass over
2000 sessions held the event loop for 100-200 ms, several times during a
reconnect storm and again at some moment after it (bench/storm.py). Nothing in
a live session is garbage, so walking it finds nothing.

So, once sessions have been accepted or authorized ``GC_FREEZE_EVERY`` times
since the last time, the process collects the young generations (a millisecond
or two) and then :func:`gc.freeze` moves everything that survived out of the
collector's sight; once a burst settles, the collection before the freeze is a
full one (it walks only what is not frozen yet: what is new). A frozen object
is still freed by reference counting, and a closed session is (under daphne,
:func:`broker_ws.servers.daphne.release_when_forgotten` and
:func:`~broker_ws.servers.daphne.release_upgrade_requests` break the cycles its
server keeps), but a frozen object that dies in a reference cycle stays until
the next reclaim: every ``GC_RECLAIM_INTERVAL`` seconds the process unfreezes,
runs one full collection over everything (the pause this module otherwise
avoids, once per interval instead of every few seconds under load) and freezes
again. ``GC_FREEZE_EVERY = 0`` leaves the collector alone.

At the end of a burst, when at least ``GC_FREEZE_EVERY`` sessions have closed
since the last time, the C heap's free pages are also given back to the system
(:func:`return_free_memory`), or the process would keep its peak RSS.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import time
from typing import Any

from broker_ws.conf import conf

logger = logging.getLogger(__name__)

#: Seconds without a new session after which what the last ones left is frozen.
SETTLE = 1.0
#: Seconds at most between a session event and the freeze that covers it, when
#: sessions keep trickling in and the burst never settles.
SETTLE_AT_MOST = 5.0


class Collector:
    """The freeze schedule of one server process."""

    def __init__(self) -> None:
        self.opened_since_freeze = 0
        self.freezes = 0
        self.reclaims = 0
        self._scheduled = False
        self._last_opened = 0.0
        self._first_pending = 0.0
        self.closed_since_trim = 0
        self._settle: asyncio.TimerHandle | None = None
        self._reclaim: asyncio.TimerHandle | None = None
        self._frozen_by_us = False
        #: Whether the last burst's end gave free heap memory back to the system.
        self.trimmed = False

    def session_event(self) -> None:
        """Count a session accepted or authorized (each allocates what it keeps);
        freeze at the next turn of the loop once ``GC_FREEZE_EVERY`` have been
        counted, or once :data:`SETTLE` seconds have passed without one (what the
        last sessions of a storm left), or :data:`SETTLE_AT_MOST` after the first
        one still pending."""
        every = conf.GC_FREEZE_EVERY
        if every <= 0:
            return
        self.opened_since_freeze += 1
        loop = asyncio.get_running_loop()
        self._last_opened = loop.time()
        if self.opened_since_freeze == 1:
            self._first_pending = self._last_opened
        if self.opened_since_freeze >= every and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.freeze, False)
        if self._settle is None:
            self._settle = loop.call_later(SETTLE, self._freeze_when_settled)
        if self._reclaim is None and conf.GC_RECLAIM_INTERVAL > 0:
            self._reclaim = loop.call_later(conf.GC_RECLAIM_INTERVAL, self.reclaim)

    def _freeze_when_settled(self) -> None:
        self._settle = None
        if self.opened_since_freeze == 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet = now - self._last_opened
        if quiet >= SETTLE or now - self._first_pending >= SETTLE_AT_MOST:
            self.freeze()
            if self.closed_since_trim >= conf.GC_FREEZE_EVERY:  # many sessions left
                self.closed_since_trim = 0
                self.trimmed = return_free_memory()
        else:
            wait = min(SETTLE - quiet, self._first_pending + SETTLE_AT_MOST - now)
            self._settle = loop.call_later(max(wait, 0.0), self._freeze_when_settled)

    def session_closed(self) -> None:
        """Count a session gone: after many, the end of the next burst gives free
        heap memory back (:func:`return_free_memory`)."""
        self.closed_since_trim += 1

    def freeze(self, full: bool = True) -> float:
        """Collect what is not frozen, then freeze what survived; the pause in ms.

        ``full=False`` (the freezes every ``GC_FREEZE_EVERY`` sessions, in the
        middle of a burst) collects the two young generations only: what was
        promoted to the oldest since the last freeze is frozen without a look. It
        is mostly those sessions, alive; a cycle among it that is already garbage
        waits for the next reclaim. Walking it too made these freezes 3-36 ms each,
        8 % of a 2000-session storm's time; the settle freeze, once the burst is
        over, is a full one."""
        self._scheduled = False
        self.opened_since_freeze = 0
        started = time.perf_counter()
        unfrozen = gc.get_count()
        if full:
            gc.collect()
        else:
            gc.collect(1)
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


def return_free_memory() -> bool:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``).

    After a burst of connections (a flood of bad tokens, a reconnect storm whose
    sessions left), their buffers are free but glibc keeps the pages: the
    process's RSS stays at its peak. ``malloc_trim(0)`` returns what it can (about
    20 of 66 MB after bench/flood.py's 2000-connection flood; the rest is Python's
    own allocator, whose arenas stay while any object in them lives). Run once at
    the end of a burst. False where the C library has no ``malloc_trim`` (musl,
    macOS).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """The C library's ``malloc_trim``, looked up once; None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


_collector: Collector | None = None


def get_collector() -> Collector:
    """The collector schedule of this process."""
    global _collector
    if _collector is None:
        _collector = Collector()
    return _collector
