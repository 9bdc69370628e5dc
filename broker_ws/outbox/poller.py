"""The outbox poll of a server process, in a thread of its own.

Every server process reads the outbox tables every ``OUTBOX_POLL_INTERVAL``
for what the bus did not bring (:mod:`broker_ws.outbox.tails`). The read itself is
one small query, about 25 µs of CPU while the tables are quiet. Through
channels' ``database_sync_to_async`` each poll cost ten times that in a quiet
process and about 1 ms in a server with 1000 sessions: the event loop wakes
to hand the call to Django's database thread, that thread wakes, the result
wakes the loop again, and old connections are checked on both sides. At four
polls a second that was 0.4 % of a core per process with nothing to read
(bench/README.md, scenario (c)).

Here one thread sleeps between polls, reads on a database connection of its
own, and wakes the event loop only when a table has new rows. The rows are
handed to the loop in the order they were read. The connection is kept as
``CONN_MAX_AGE`` says (with 0, every poll connects anew) and closed after a
failed read, so that the next one reconnects. A database outage is logged
when it starts and when it ends, not at every poll.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections, connections

from broker_ws.conf import DEFAULTS, conf
from broker_ws.outbox import tails

logger = logging.getLogger(__name__)

#: New rows of the account events, revocations and broadcasts (:func:`tails.read`).
Batches = list[list[tuple[Any, ...]]]

#: How long closing a hub waits for a read in progress to end, in seconds.
STOP_TIMEOUT = 5.0


class OutboxPoller:
    """Reads ``followed()`` every ``OUTBOX_POLL_INTERVAL`` while ``active()``.

    ``followed`` returns the tails to read, or None while there are none yet;
    ``deliver`` is called on ``loop`` with every read that found rows.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        followed: Callable[[], tuple[tails.Tail, ...] | None],
        active: Callable[[], bool],
        deliver: Callable[[Batches], None],
    ) -> None:
        self._loop = loop
        self._followed = followed
        self._active = active
        self._deliver = deliver
        self._wake = threading.Event()
        self._stopping = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="broker_ws-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poll_now(self) -> None:
        """Read at once instead of at the end of the interval (the bus reconnected)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop polling; wait for a read in progress and the connection's close."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, STOP_TIMEOUT)
        if self._thread.is_alive():
            logger.warning(
                "broker_ws: the outbox poll thread is still reading after %s s; "
                "it ends, and closes its database connection, when that read returns",
                STOP_TIMEOUT,
            )

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(poll_interval())
                self._wake.clear()
                if self._stopping or self._loop.is_closed():
                    return
                try:
                    self._poll_once()
                except Exception:
                    if self._loop.is_closed():  # call_soon_threadsafe on a closed loop
                        return
                    # This thread must live on: it is how the process hears of
                    # frames its bus did not bring.
                    logger.exception("broker_ws: the outbox poll failed; retrying")
        finally:
            connections.close_all()  # this thread's connections only

    def _poll_once(self) -> None:
        followed = self._followed()
        if followed is None or not self._active():
            return
        batches = self._read(followed)
        if batches is not None and any(batches):
            self._loop.call_soon_threadsafe(self._deliver, batches)

    def _read(self, followed: tuple[tails.Tail, ...]) -> Batches | None:
        try:
            batches = tails.read(followed)
        except Exception as exc:
            # No cursor moved: the next poll reads the same rows again. A broken
            # connection is closed here and opened again by the next read.
            close_old_connections()
            if not self._failing:
                logger.warning("broker_ws: reading the outbox failed (%s); retrying", exc)
            else:
                logger.debug("broker_ws: reading the outbox still fails (%s)", exc)
            self._failing = True
            return None
        if self._failing:
            logger.warning("broker_ws: reading the outbox works again")
            self._failing = False
        _close_if_obsolete()
        return batches


def poll_interval() -> float:
    """``OUTBOX_POLL_INTERVAL``, or the default if the setting cannot be read now
    (``broker_ws.E005`` reports it at start-up)."""
    try:
        return conf.OUTBOX_POLL_INTERVAL
    except Exception:
        return float(DEFAULTS["OUTBOX_POLL_INTERVAL"])


def _close_if_obsolete() -> None:
    """Close this thread's connections older than ``CONN_MAX_AGE``.

    Not ``close_old_connections()`` after every read: it also marks the
    connection for a health check (``CONN_HEALTH_CHECKS``), one more round trip
    on every poll. A connection broken since is found by the next read, which
    fails, and is closed then.
    """
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.close_at is not None and now >= connection.close_at:
            connection.close()
