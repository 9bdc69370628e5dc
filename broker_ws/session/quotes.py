"""The symbol registry and quote fan-out of one server process.

A symbol's bus channel is subscribed while at least one local session
needs it. Each quote the bus brings is encoded once
(:class:`~broker_ws.wire.encoded.EncodedFrame`) and offered to every
subscribed session as is; the last one is kept for the snapshot that
answers a later subscribe.

Ordering guarantee: a session is registered with no await between reading
the cached last quote and joining the symbol's sessions, so it gets the
snapshot and then every later quote, never an older one after a newer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from broker_ws import metrics
from broker_ws.backends import Subscriber
from broker_ws.session.sessions import Session, Spawn, wait_shared
from broker_ws.wire import channel_names
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)


class QuoteFanout:
    """Which local sessions want which symbol, their last quotes, and the fan-out."""

    def __init__(
        self,
        subscriber: Subscriber,
        spawn: Spawn,
        unsubscribe_soon: Callable[[list[str]], None],
    ) -> None:
        """``unsubscribe_soon(channels)`` drops bus subscriptions nobody here needs."""
        self._subscriber = subscriber
        self._spawn = spawn
        self._unsubscribe_soon = unsubscribe_soon
        #: Sessions per quote channel (present, maybe empty, while subscribed).
        self.sessions: dict[str, set[Session]] = {}
        #: The last quote frame of each subscribed channel.
        self.last_quote: dict[str, str] = {}
        #: The task subscribing a channel and reading its last quote, while in flight.
        self._opening: dict[str, asyncio.Future[None]] = {}
        #: Sessions waiting for a channel to be open, per channel.
        self.waiters: dict[str, int] = {}

    async def add(
        self, session: Session, symbols: Sequence[str], closing: bool = False
    ) -> list[str]:
        """Subscribe ``session`` to ``symbols``; return their last quote frames.

        The session is registered before this returns (see the module
        docstring). A session that subscribes while another one's
        subscription of the same symbol is still in flight waits for it and
        gets the same snapshot. A session closed meanwhile (or any session
        once the hub is ``closing``) is not registered and gets no frames.
        """
        channels = [channel_names.quote_channel(symbol) for symbol in symbols]
        waiters = self.waiters
        for channel in channels:
            waiters[channel] = waiters.get(channel, 0) + 1
        try:
            new = [i for i, channel in enumerate(channels) if channel not in self.sessions]
            if new:
                for i in new:
                    self.sessions[channels[i]] = set()
                ready = self._spawn(
                    self._open([channels[i] for i in new], [symbols[i] for i in new])
                )
                for i in new:
                    self._opening[channels[i]] = ready
            waits = {id(f): f for c in channels if (f := self._opening.get(c)) is not None}
            for shared in waits.values():
                await wait_shared(shared)
        finally:
            for channel in channels:
                waiters[channel] -= 1
                if not waiters[channel]:
                    del waiters[channel]
        if session.closed or closing:
            self.release(channels)
            return []
        frames = []
        for channel in channels:
            self.sessions.setdefault(channel, set()).add(session)
            frame = self.last_quote.get(channel)
            if frame is not None:
                frames.append(frame)
        return frames

    async def _open(self, channels: list[str], symbols: list[str]) -> None:
        """Subscribe new quote channels, then read their last quotes (the bus never
        fails this: it subscribes on reconnect and has no snapshot while down)."""
        try:
            await self._subscriber.subscribe(channels)
            fetched = await self._subscriber.last_quotes(symbols)
            for channel, symbol in zip(channels, symbols, strict=True):
                frame = fetched.get(symbol)
                # A live quote that arrived meanwhile is newer: keep it.
                if frame is not None and channel not in self.last_quote:
                    self.last_quote[channel] = frame
        finally:
            for channel in channels:
                self._opening.pop(channel, None)
            self.release(channels)  # if every session that wanted them left

    def remove(self, session: Session, symbols: Iterable[str]) -> None:
        """Unsubscribe ``session``; drop bus subscriptions nobody here needs."""
        emptied = []
        for symbol in symbols:
            channel = channel_names.quote_channel(symbol)
            sessions = self.sessions.get(channel)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    emptied.append(channel)
        self.release(emptied)

    def release(self, channels: list[str]) -> None:
        """Forget the channels among ``channels`` that no session here needs or waits
        for, and unsubscribe them."""
        idle = []
        for channel in channels:
            if channel in self._opening or channel in self.waiters:
                continue
            if channel in self.sessions and not self.sessions[channel]:
                del self.sessions[channel]
                self.last_quote.pop(channel, None)
                idle.append(channel)
        if idle:
            self._unsubscribe_soon(idle)

    async def deliver(self, channel: str, frame: str) -> bool:
        """Fan a quote out to the channel's sessions; False if it is no quote channel
        subscribed here."""
        sessions = self.sessions.get(channel)
        if sessions is None:
            return False
        self.last_quote[channel] = frame
        metrics.QUOTE_FRAMES.inc(len(sessions))
        encoded = EncodedFrame(frame)  # once for every session
        for session in tuple(sessions):  # the hot path: no coroutine per session
            try:
                pending = session.offer_quote(channel, encoded)
                if pending is not None:
                    await pending
            except Exception:
                logger.exception("broker_ws: sending to a session failed")
        return True
