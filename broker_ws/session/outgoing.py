"""Everything one session sends: in order, and with a slow-consumer policy.

daphne's ``send`` never blocks: a client that stops reading makes the
server buffer frames without bound (+25 MB in 30 s for one stalled client).
uvicorn's ``send`` waits for the socket to drain, which would stall a shared
fan-out loop. So before writing, a session asks its server's
:class:`~broker_ws.servers.Transport` how many bytes the server already holds
for its socket; past the transport's limit (``SLOW_CONSUMER_BUFFER``, or
less under uvicorn) it stops writing and becomes *slow*:

* quotes are conflated: only the latest frame per symbol is kept (an
  instrument status is never conflated: the quote held before it is queued
  ahead of it, :meth:`Outgoing.push_after_quote`);
* every other frame (replies, account frames, notifications) is kept in
  order; past ``SLOW_CONSUMER_MAX_PENDING`` of them the session is closed
  with :attr:`~broker_ws.wire.protocol.CloseCode.TOO_SLOW`, and the client
  resumes or reconciles over REST. An account frame is never dropped
  silently.

A slow session checks every :data:`DRAIN_CHECK` seconds whether its socket
has drained, then writes what it kept: the ordered frames first, then the
latest quote of each symbol.

A frame is written through the transport's shortcut when it has one, else
through ASGI ``send``. A write that fails because the client left drops the
queue (the session's disconnect message is on its way). A write that fails
for any other reason is logged at WARNING and closes the session with
:attr:`~broker_ws.wire.protocol.CloseCode.UNAVAILABLE` (reconnect after a
back-off, with resume): a session delivers or closes, never stays open and
silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from broker_ws.conf import conf
from broker_ws.servers import ConnectionGone, Transport
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)

#: Seconds between two looks at a slow session's socket.
DRAIN_CHECK = 0.05

Send = Callable[[dict[str, Any]], Awaitable[None]]
#: A frame to send: its text, or already encoded for every session that gets it.
Frame = str | EncodedFrame


async def _nothing_to_do() -> None:
    return None


class Outgoing:
    """The ordered, flow-controlled frames of one session."""

    def __init__(
        self,
        send: Send,
        transport: Transport,
        on_too_slow: Callable[[], Awaitable[None]],
        on_failed: Callable[[], Coroutine[Any, Any, None]] = _nothing_to_do,
    ) -> None:
        """``on_too_slow`` and ``on_failed`` close the session (with ``TOO_SLOW``,
        and ``UNAVAILABLE`` when a write failed other than by the client leaving)."""
        self._send = send
        self._transport = transport
        self._on_too_slow = on_too_slow
        self._on_failed = on_failed
        #: Whether the transport may write frames itself (else: always ASGI send).
        self._direct = type(transport) is not Transport
        self._limit = transport.buffer_limit
        self._ordered: deque[Frame] = deque()
        self._quotes: dict[str, EncodedFrame] = {}
        #: Tasks of this queue (flushes after a drain), referenced until done.
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending = False
        self._holds = 0
        self._watch: asyncio.TimerHandle | None = None
        self.slow = False
        self.closed = False
        #: Frames written to the socket so far (for the heartbeat: a session that was
        #: written to is not idle).
        self.written = 0

    # --- entry points ---------------------------------------------------
    async def push(self, frame: Frame) -> None:
        """Send a frame that must arrive, after every frame queued before it (an
        :class:`EncodedFrame` when the same frame goes to several sessions)."""
        if self.closed:
            return
        if self._sending or self._holds or self._ordered or self.slow:
            self._ordered.append(frame)
            await self._check_pending()
            return
        await self._write_now(frame)

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
            self._quotes[key] = frame
            return None
        if not self._direct or self._sending or self._holds or self._ordered:
            return self.push(frame)
        if self._backed_up():
            self._become_slow()
            self._quotes[key] = frame
            return None
        try:
            if self._transport.write(frame):
                self.written += 1
                return None
        except ConnectionGone:
            self._gone()
            return None
        return self.push(frame)

    async def push_after_quote(self, key: str, frame: Frame) -> None:
        """Send a frame that must arrive (an instrument status), after the quote of
        ``key`` offered before it: a quote a slow session holds conflated under
        ``key`` is queued ahead of it, in order, instead of after every ordered frame."""
        if self.closed:
            return
        quote = self._quotes.pop(key, None)
        if quote is not None:
            self._ordered.append(quote)
        await self.push(frame)

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
        self._on_failed = _nothing_to_do
        self._ordered.clear()
        self._quotes.clear()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    # --- writing ----------------------------------------------------------
    def _backed_up(self) -> bool:
        buffered = self._transport.buffered() if self._limit else None
        return buffered is not None and buffered > self._limit

    async def _write_now(self, frame: Frame) -> None:
        if self._backed_up():
            self._become_slow()
            self._ordered.append(frame)
            return
        self._sending = True
        try:
            await self._write(frame)
        finally:
            self._sending = False
        if self._ordered:
            await self._flush()

    async def _write(self, frame: Frame) -> None:
        self.written += 1
        if self._direct:
            encoded = frame if isinstance(frame, EncodedFrame) else EncodedFrame(frame)
            try:
                if self._transport.write(encoded):
                    return
            except ConnectionGone:
                self._gone()
                return
        text = frame.text if isinstance(frame, EncodedFrame) else frame
        try:
            await self._send({"type": "websocket.send", "text": text})
        except Exception as exc:
            # ASGI servers raise an OSError (uvicorn's ClientDisconnected) on a
            # send to a connection that is gone.
            if isinstance(exc, OSError) or self._transport.connection_closed():
                self._gone()
            else:
                self._failed(exc)

    def _gone(self) -> None:
        # The client went away and the server has not told the session yet
        # (its disconnect message is still queued): nothing to send to.
        logger.debug("broker_ws: send on a closed socket; dropping the session's queue")
        self.close()

    def _failed(self, exc: Exception) -> None:
        """A write failed with the client still there: close the session."""
        logger.warning(
            "broker_ws: a write to a session failed (%r); closing it with UNAVAILABLE", exc
        )
        on_failed = self._on_failed  # close() lets go of it
        self.close()
        self._spawn(on_failed())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                frame = ordered.popleft() if ordered else quotes.pop(next(iter(quotes)))
                await self._write(frame)
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
        self._spawn(self._flush())
