"""Presence: how many sessions each login has right now, over every server process.

Each hub keeps a record of its authorized sessions per login on the bus
(:class:`PresenceReporter`): with Redis, a hash of its own that expires
``3 × PRESENCE_INTERVAL`` seconds after its last refresh, so a server process
that dies without a goodbye (``kill -9``, a lost host) drops out by itself;
with the in-process backend, a record in this process. A change (a session
authorized or gone) is written within :data:`CHANGE_DELAY`, only the logins
that changed; the record is refreshed every ``PRESENCE_INTERVAL`` and deleted
when its last session leaves or the hub closes.

:func:`presence` (and :func:`apresence`) sums the live records. A session
counts once for each of its logins, from the moment it is authorized until it
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from broker_ws.backends import Backend, get_backend
from broker_ws.conf import conf
from broker_ws.exceptions import Unavailable

__all__ = [
    "PresenceReporter",
    "apresence",
    "apresence_by_process",
    "presence",
    "presence_by_process",
]

logger = logging.getLogger(__name__)

#: After a change, how long the reporter waits for more before writing (seconds):
#: a connect storm costs a few writes, not one per session.
CHANGE_DELAY = 0.1
#: Records expire after this many refresh intervals without a refresh.
TTL_INTERVALS = 3
#: How long a hub that closes waits for its record to be deleted (seconds).
DROP_TIMEOUT = 0.5


def process_name() -> str:
    """A name for one hub's record: host, process id and a random part (a process may
    run several hubs, one per event loop, and a new process may get an old pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class PresenceReporter:
    """Keeps one hub's record on the bus up to date (a task the hub owns)."""

    def __init__(self, backend: Backend, counts: Callable[[], dict[str, int]]) -> None:
        """``counts()``: the hub's authorized sessions per login, right now."""
        self.backend = backend
        self.process = process_name()
        self._counts = counts
        self._changed = asyncio.Event()
        #: What the bus holds, as far as this reporter knows; None: unknown (not
        #: written yet, or a write failed), so the next write is the whole record.
        self._recorded: dict[str, int] | None = None
        self._failing = False
        #: When the record was last written (the loop's clock).
        self._written_at = 0.0

    def changed(self) -> None:
        """A session of the hub was authorized or has gone."""
        self._changed.set()

    async def run(self) -> None:
        """Write changes as they come, and refresh the record every ``PRESENCE_INTERVAL``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), conf.PRESENCE_INTERVAL)
            refresh = not self._changed.is_set()
            if not refresh:
                await asyncio.sleep(CHANGE_DELAY)
                self._changed.clear()
            await self.report(refresh)

    async def report(self, refresh: bool = True) -> None:
        """Write what changed since the last write; with ``refresh``, also when nothing
        did (the record's ttl starts again). Never raises: a failed write is logged once
        per outage and the next one writes the whole record."""
        clock = asyncio.get_running_loop().time
        # Changes that change no count (a session that never authorized) must not
        # hold off the refresh.
        refresh = refresh or clock() - self._written_at >= conf.PRESENCE_INTERVAL
        now = self._counts()
        recorded = self._recorded
        ttl = TTL_INTERVALS * conf.PRESENCE_INTERVAL
        try:
            if not now:
                if recorded != {}:
                    await self.backend.adrop_presence(self.process)
            elif not recorded:  # unknown, or nothing there
                await self.backend.aput_presence(self.process, now, None, ttl)
            else:
                changed = {login: n for login, n in now.items() if recorded.get(login) != n}
                gone = [login for login in recorded if login not in now]
                if changed or gone or refresh:
                    fresh = await self.backend.aput_presence(self.process, changed, gone, ttl)
                    if not fresh:  # expired meanwhile (a stall, a Redis restart): all of it
                        await self.backend.aput_presence(self.process, now, None, ttl)
        except Exception as exc:
            self._recorded = None
            if not self._failing:
                self._failing = True
                logger.warning("broker_ws: presence could not be written (%s)", exc)
            return
        if self._failing:
            self._failing = False
            logger.warning("broker_ws: presence written again")
        self._recorded = now
        self._written_at = clock()

    async def close(self) -> None:
        """Delete the record (best effort: otherwise it expires)."""
        if not self._recorded:
            return  # nothing written, or the last write failed (what is left expires)
        try:
            await asyncio.wait_for(self.backend.adrop_presence(self.process), DROP_TIMEOUT)
        except Exception as exc:
            logger.info("broker_ws: presence record not deleted (%s); it expires", exc)


def _total(per_process: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in per_process.values():
        for login, sessions in counts.items():
            total[login] = total.get(login, 0) + sessions
    return dict(sorted(total.items()))


def presence_by_process() -> dict[str, dict[str, int]]:
    """Sessions per login of each live server process (its record's name -> login ->
    sessions); see :func:`presence`.

    Raises:
        Unavailable: Redis could not be read.
    """
    try:
        return get_backend().read_presence()
    except Exception as exc:
        raise Unavailable("presence could not be read from the bus") from exc


async def apresence_by_process() -> dict[str, dict[str, int]]:
    """Async :func:`presence_by_process`."""
    try:
        return await get_backend().aread_presence()
    except Exception as exc:
        raise Unavailable("presence could not be read from the bus") from exc


def presence() -> dict[str, int]:
    """How many authorized sessions each login has right now, on all server processes.

    Logins without a session are absent; a session counts once for each of its
    logins. With ``REDIS_URL``, the sum of every server process's record (at most
    :data:`CHANGE_DELAY` behind; a process that died without a goodbye counts until
    its record expires, ``3 × PRESENCE_INTERVAL``); without it, the sessions of this
    process only. Safe to call from any thread (one Redis round trip or two).

    Raises:
        Unavailable: Redis could not be read (nothing partial is returned).
    """
    return _total(presence_by_process())


async def apresence() -> dict[str, int]:
    """Async :func:`presence`."""
    return _total(await apresence_by_process())
