"""In-process backend: the embedded default when no REDIS_URL is set.

Everything lives in this process, so only sessions served by this process
see what it publishes. Publishers may run in any thread (admin views run in
a worker thread under daphne); delivery to each subscriber is handed to its
event loop with ``call_soon_threadsafe``, under one lock so that the order
of sequence numbers is the order of delivery.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable, Sequence

from broker_ws.backends.base import (
    AccountParts,
    Backend,
    MessageHandler,
    Subscriber,
    pack_account,
)
from broker_ws.frames import join_account


class MemoryBackend(Backend):
    """Process-wide state and bus."""

    def __init__(self, history_size: int) -> None:
        self.history_size = history_size
        self._lock = threading.Lock()
        self._last_quotes: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._history: dict[str, deque[tuple[int, str]]] = {}
        self._subscribers: set[MemorySubscriber] = set()

    def _deliver(self, channel: str, payload: str) -> None:
        # Caller holds the lock.
        for subscriber in self._subscribers:
            if channel in subscriber.channels:
                subscriber.post(channel, payload)

    def publish_quote(self, channel: str, symbol: str, frame: str) -> None:
        with self._lock:
            self._last_quotes[symbol] = frame
            self._deliver(channel, frame)

    async def apublish_quote(self, channel: str, symbol: str, frame: str) -> None:
        self.publish_quote(channel, symbol, frame)

    def append_account(self, channel: str, parts: AccountParts) -> list[int]:
        seqs = []
        with self._lock:
            history = self._history.setdefault(channel, deque(maxlen=self.history_size))
            for head, tail in parts:
                seq = self._seq.get(channel, 0) + 1
                self._seq[channel] = seq
                frame = join_account(head, seq, tail)
                history.append((seq, frame))
                self._deliver(channel, pack_account(seq, frame))
                seqs.append(seq)
        return seqs

    async def aappend_account(self, channel: str, parts: AccountParts) -> list[int]:
        return self.append_account(channel, parts)

    def publish(self, channel: str, frame: str) -> None:
        with self._lock:
            self._deliver(channel, frame)

    async def apublish(self, channel: str, frame: str) -> None:
        self.publish(channel, frame)

    def connect(self, handler: MessageHandler) -> MemorySubscriber:
        return MemorySubscriber(self, handler, asyncio.get_running_loop())

    # Reads for subscribers.
    def _read_last_quotes(self, symbols: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return {s: self._last_quotes[s] for s in symbols if s in self._last_quotes}

    def _read_seq(self, channel: str) -> int:
        with self._lock:
            return self._seq.get(channel, 0)

    def _read_history(self, channel: str, after: int) -> list[tuple[int, str]] | None:
        with self._lock:
            history = list(self._history.get(channel, ()))
            current = self._seq.get(channel, 0)
        if after >= current:
            return []
        frames = [(seq, frame) for seq, frame in history if seq > after]
        if not frames or frames[0][0] != after + 1:
            return None
        return frames


class MemorySubscriber(Subscriber):
    """One event loop's view of the in-process bus."""

    def __init__(
        self, backend: MemoryBackend, handler: MessageHandler, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.backend = backend
        self.handler = handler
        self.loop = loop
        self.channels: set[str] = set()

    def post(self, channel: str, payload: str) -> None:
        """Hand one message to the subscriber's loop, from any thread.

        Always through the loop's FIFO queue, even from the loop's own thread,
        so messages posted under the backend lock keep their order.
        """
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.handler, channel, payload)

    async def start(self) -> None:
        with self.backend._lock:
            self.backend._subscribers.add(self)

    async def close(self) -> None:
        with self.backend._lock:
            self.backend._subscribers.discard(self)
            self.channels.clear()

    async def subscribe(self, channels: Iterable[str]) -> None:
        with self.backend._lock:
            self.channels.update(channels)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        with self.backend._lock:
            self.channels.difference_update(channels)

    async def last_quotes(self, symbols: Sequence[str]) -> dict[str, str]:
        return self.backend._read_last_quotes(symbols)

    async def current_seq(self, channel: str) -> int:
        return self.backend._read_seq(channel)

    async def history(self, channel: str, after: int) -> list[tuple[int, str]] | None:
        return self.backend._read_history(channel, after)
