"""Everything one session sends: in order, and with a slow-consumer policy.

daphne's ``send`` never blocks: a client that stops reading makes the
server buffer frames without bound (DESIGN §4: +25 MB in 30 s for one stalled
client). uvicorn's ``send`` waits for the socket to drain, which would stall
a shared fan-out loop. So before writing, a session looks at how many bytes
the server already holds for its socket (:func:`write_buffer_probe`); past
``SLOW_CONSUMER_BUFFER`` it stops writing and becomes *slow*:

* quotes are conflated: only the latest frame per symbol is kept;
* every other frame (replies, account frames, notifications) is kept in
  order; past ``SLOW_CONSUMER_MAX_PENDING`` of them the session is closed
  with :attr:`~broker_ws.wire.protocol.CloseCode.TOO_SLOW`, and the client
  resumes or reconciles over REST. An account frame is never dropped
  silently.

A slow session checks every :data:`DRAIN_CHECK` seconds whether its socket
has drained, then writes what it kept: the ordered frames first, then the
latest quote of each symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from broker_ws.conf import conf
from broker_ws.servers.direct_write import EncodedFrame, direct_writer

logger = logging.getLogger(__name__)

#: Seconds between two looks at a slow session's socket.
DRAIN_CHECK = 0.05

Send = Callable[[dict[str, Any]], Awaitable[None]]


def write_buffer_probe(send: Any) -> tuple[Callable[[], int], int] | None:
    """How to see the bytes the server holds for this socket, and how many it may hold.

    daphne passes ``partial(server.handle_reply, protocol)`` as ``send``;
    uvicorn passes a bound method of its protocol. Either way the protocol's
    transport tells how much is waiting to be written. Returns a function
    giving that size and the threshold past which the session is slow:
    ``SLOW_CONSUMER_BUFFER``, or for asyncio transports (uvicorn) at most half
    their high-water mark, because above that mark uvicorn's ``send`` waits
    for the client and would hold up every other session of the process.
    Other servers (and test communicators) hide the transport: None, and the
    session has no slow-consumer policy.
    """
    args = getattr(send, "args", None)
    protocol = args[0] if args else getattr(send, "__self__", None)
    transport = getattr(protocol, "transport", None)
    limit = conf.SLOW_CONSUMER_BUFFER
    for candidate in (transport, getattr(transport, "transport", None)):  # TLS wraps TCP
        if candidate is None:
            continue
        size = getattr(candidate, "get_write_buffer_size", None)
        if callable(size):  # asyncio transports (uvicorn)
            _low, high = candidate.get_write_buffer_limits()
            return size, min(limit, max(high // 2, 1))
        if hasattr(candidate, "dataBuffer") and hasattr(candidate, "_tempDataLen"):
            return partial(_twisted_buffer_size, candidate), limit  # daphne
    return None


def _twisted_buffer_size(transport: Any) -> int:
    """Bytes a Twisted ``FileDescriptor`` still has to write."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


async def _nothing_to_do() -> None:
    return None


class Outgoing:
    """The ordered, flow-controlled frames of one session."""

    def __init__(self, send: Send, on_too_slow: Callable[[], Awaitable[None]]) -> None:
        self._send = send
        self._on_too_slow = on_too_slow
        self._direct = direct_writer(send)
        probe = write_buffer_probe(send)
        self._queued: Callable[[], int] | None = probe[0] if probe else None
        self._limit = probe[1] if probe else 0
        self._ordered: deque[str] = deque()
        self._quotes: dict[str, str] = {}
        self._sending = False
        self._holds = 0
        self._watch: asyncio.TimerHandle | None = None
        self.slow = False
        self.closed = False

    # --- entry points ---------------------------------------------------
    async def push(self, text: str) -> None:
        """Send a frame that must arrive, after every frame queued before it."""
        if self.closed:
            return
        if self._sending or self._holds or self._ordered or self.slow:
            self._ordered.append(text)
            await self._check_pending()
            return
        await self._write_now(text)

    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        """Send a quote (encoded once for every session); while the client is slow
        only the latest per ``key`` is kept.

        The fan-out's hot path: synchronous when the frame can be written at
        once (daphne or uvicorn, nothing queued), else an awaitable the caller awaits.
        """
        if self.closed:
            return None
        if self.slow:
            self._quotes.pop(key, None)  # re-insert: flushed in order of last update
            self._quotes[key] = frame.text
            return None
        direct = self._direct
        if direct is None or self._sending or self._holds or self._ordered:
            return self.push(frame.text)
        if self._backed_up():
            self._become_slow()
            self._quotes[key] = frame.text
            return None
        try:
            if direct(frame):
                return None
        except Exception as exc:
            self._gone(exc)
            return None
        return self.push(frame.text)

    @contextlib.asynccontextmanager
    async def answering(self) -> AsyncIterator[list[str]]:
        """Collect replies that must precede the live frames they announce.

        Frames pushed meanwhile wait and follow the replies.
        """
        replies: list[str] = []
        self._holds += 1
        try:
            yield replies
        finally:
            self._holds -= 1
            if not self.closed:
                self._ordered.extendleft(reversed(replies))
                await self._flush()

    async def send_out_of_band(self, text: str) -> None:
        """Write a control frame at once, ahead of anything held or queued, even to a
        slow client: for a notice whose order against other frames carries no meaning
        and which must not wait behind (or be dropped with) a slow client's queue."""
        if self.closed:
            return
        await self._write(text)

    async def send_last(self, text: str) -> None:
        """Send the last frame before a close at once, ahead of anything held or
        queued (which the close drops anyway)."""
        if self.closed:
            return
        self._ordered.clear()
        self._quotes.clear()
        await self._write(text)

    def close(self) -> None:
        """Drop everything still queued; the session is gone.

        Also lets go of the session's callback, so that a closed session is freed by
        reference counting rather than left to the cycle collector."""
        self.closed = True
        self._on_too_slow = _nothing_to_do
        self._ordered.clear()
        self._quotes.clear()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    # --- writing ----------------------------------------------------------
    def _backed_up(self) -> bool:
        return self._queued is not None and self._queued() > self._limit

    async def _write_now(self, text: str) -> None:
        if self._backed_up():
            self._become_slow()
            self._ordered.append(text)
            return
        self._sending = True
        try:
            await self._write(text)
        finally:
            self._sending = False
        if self._ordered:
            await self._flush()

    async def _write(self, text: str) -> None:
        try:
            if self._direct is None or not self._direct(EncodedFrame(text)):
                await self._send({"type": "websocket.send", "text": text})
        except Exception as exc:
            self._gone(exc)

    def _gone(self, exc: Exception) -> None:
        # The client went away and the server has not told the session yet
        # (its disconnect message is still queued): nothing to send to.
        logger.debug("broker_ws: send on a closed socket (%r); dropping the session's queue", exc)
        self.close()

    async def _flush(self) -> None:
        """Write what waits, in order, until it is all out or the socket backs up."""
        if self._sending or self._holds:
            return
        self._sending = True
        try:
            ordered, quotes = self._ordered, self._quotes
            while not self.closed and (ordered or (self.slow and quotes)):
                if self._backed_up():
                    self._become_slow()
                    return
                text = ordered.popleft() if ordered else quotes.pop(next(iter(quotes)))
                await self._write(text)
            if self.slow and not self.closed:
                self.slow = False
                logger.info("broker_ws: slow session caught up")
        finally:
            self._sending = False

    async def _check_pending(self) -> None:
        if len(self._ordered) > conf.SLOW_CONSUMER_MAX_PENDING and not self.closed:
            logger.warning(
                "broker_ws: closing a session that stopped reading (%d frames pending)",
                len(self._ordered),
            )
            too_slow = self._on_too_slow  # close() lets go of it
            self.close()
            await too_slow()

    # --- slow mode ----------------------------------------------------------
    def _become_slow(self) -> None:
        if not self.slow:
            self.slow = True
            logger.info("broker_ws: session is slow; conflating its quotes")
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(DRAIN_CHECK, self._check_drained)

    def _check_drained(self) -> None:
        self._watch = None
        if self.closed:
            return
        if self._backed_up():
            self._watch = asyncio.get_running_loop().call_later(DRAIN_CHECK, self._check_drained)
            return
        asyncio.get_running_loop().create_task(self._flush())
