"""Draining a server process on SIGTERM instead of dropping its sessions.

Left to themselves, daphne drops every connection without a close frame on
SIGTERM (clients see 1006) and uvicorn closes them all with 1012 in the same
instant; either way every client of the process reconnects at once. Here,
the first SIGTERM a server process receives starts a drain instead:

1. every open session is sent ``{"event":"reconnect","data":{"within_ms": N}}``
   (N is ``DRAIN_WINDOW`` in milliseconds): reconnect, with ``resume``, at a
   random moment within N ms; the old session keeps streaming meanwhile;
2. each session is closed with 4009 (:attr:`CloseCode.RESTARTING`) at a
   random moment within the window, so that clients which ignore the notice
   still come back spread over it; sessions that open during the drain get
   the notice and 4009 at once;
3. once every session's connection is gone (the client answered the close
   frame, or left), or :data:`GRACE` seconds after the window, the server's own
   SIGTERM handler runs, and the server stops as it would have. A session
   counts until its connection is gone, not until its close is asked for: a
   client that is behind in reading still has its notice and close frame in the
   server's buffers, and the server's shutdown would drop them (1006).

A second SIGTERM during the drain stops the server at once. The handler is
installed, once per process, when the first session of a daphne or uvicorn
server opens (both install theirs with :func:`signal.signal` before serving,
so it wraps theirs); elsewhere (test communicators, another thread) nothing is
installed. ``DRAIN_WINDOW = 0`` leaves SIGTERM to the server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
from types import FrameType
from typing import Any, Protocol

from broker_ws.conf import conf
from broker_ws.servers import Transport
from broker_ws.wire import frames
from broker_ws.wire.protocol import CloseCode

logger = logging.getLogger(__name__)

#: How long after the window the drain waits for the last close handshakes.
GRACE = 2.0


class DrainableSession(Protocol):
    """What a drain needs of a session."""

    closed: bool

    async def notify(self, text: str) -> None:
        """Send a control notice at once, even to a client that is behind in reading."""

    async def close(self, code: CloseCode, answer_within: float = 0.0) -> None:
        """Close with a documented code, giving the client ``answer_within`` seconds
        to answer the close frame."""


def reconnect_notice(within_ms: int) -> str:
    """``{"event":"reconnect","data":{"within_ms": N}}``."""
    return frames.control("reconnect", {"within_ms": max(int(within_ms), 0)})


class Drain:
    """The open sessions of one server process and its SIGTERM drain."""

    def __init__(self) -> None:
        self.sessions: set[DrainableSession] = set()
        self.draining = False
        self._deadline = 0.0
        self._previous: Any = None
        self._installed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- installation -----------------------------------------------------------
    def install(self, transport: Transport) -> None:
        """Wrap the server's SIGTERM handler, once, if the session's server is daphne
        or uvicorn and this is the main thread (where signal handlers live)."""
        if self._installed or conf.DRAIN_WINDOW <= 0 or not transport.handles_sigterm:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        self._installed = True
        self._loop = asyncio.get_running_loop()
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        loop = self._loop
        if self.draining or loop is None or loop.is_closed():
            self._hand_over(signum, frame)  # a second SIGTERM: stop now
            return
        self.draining = True
        loop.call_soon_threadsafe(self._start)

    def _hand_over(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Run what SIGTERM would have run without the drain."""
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # SIG_DFL (or unknown): die as SIGTERM would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    # --- sessions ---------------------------------------------------------------
    def add(self, session: DrainableSession) -> None:
        """Track an open session; during a drain it is told to go at once."""
        self.sessions.add(session)
        if self.draining:
            self._spawn(self._send_away(session, 0.0))

    def discard(self, session: DrainableSession) -> None:
        self.sessions.discard(session)

    # --- the drain ----------------------------------------------------------------
    def _start(self) -> None:
        self._spawn(self._drain())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        window = conf.DRAIN_WINDOW
        self._deadline = loop.time() + window
        sessions = list(self.sessions)
        logger.warning(
            "broker_ws: SIGTERM: draining %d session(s) over %.1f s", len(sessions), window
        )
        for session in sessions:
            self._spawn(self._send_away(session, random.uniform(0, window)))
        # Wait until the last connection is gone (its close handshake done).
        while self.sessions and loop.time() < self._deadline + GRACE:
            await asyncio.sleep(0.05)
        logger.warning("broker_ws: drained; handing over to the server's shutdown")
        self._hand_over()

    async def _send_away(self, session: DrainableSession, delay: float) -> None:
        loop = asyncio.get_running_loop()
        remaining = max(self._deadline - loop.time(), 0.0)
        try:
            await session.notify(reconnect_notice(int(remaining * 1000)))
            await asyncio.sleep(delay)
            if not session.closed:
                # Until the drain hands over: time for a client behind in reading.
                patience = self._deadline + GRACE - loop.time()
                await session.close(CloseCode.RESTARTING, answer_within=patience)
        except Exception as exc:  # the client left meanwhile
            logger.debug("broker_ws: drain of a session ended early (%r)", exc)


_drain: Drain | None = None
_drain_lock = threading.Lock()


def get_drain() -> Drain:
    """The drain of this process."""
    global _drain
    if _drain is None:
        with _drain_lock:
            if _drain is None:
                _drain = Drain()
    return _drain
