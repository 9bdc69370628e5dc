"""In-process backend: the embedded default when no REDIS_URL is set.

Everything lives in this process, so only sessions served by this process
see what it publishes (account frames saved by other processes still
arrive, read back from the database outbox). Publishers may run in any
thread (admin views run in a worker thread under daphne); delivery to each
subscriber is handed to its event loop with ``call_soon_threadsafe``, under
one lock so that the order of publishing is the order of delivery.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from broker_ws.backends.base import Backend, MessageHandler, Subscriber


class MemoryBackend(Backend):
    """Process-wide state and bus."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_quotes: dict[str, str] = {}
        self._last_statuses: dict[str, str] = {}
        self._subscribers: set[MemorySubscriber] = set()
        #: The last state frame of each (login, marker), for REST snapshots.
        self._last_states: dict[tuple[str, str], str] = {}
        #: Presence records of this process's hubs: process -> (deadline, counts).
        self._presence: dict[str, tuple[float, dict[str, int]]] = {}

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

    def publish_status(self, channel: str, symbol: str, frame: str) -> None:
        with self._lock:
            self._last_statuses[symbol] = frame
            self._deliver(channel, frame)

    async def apublish_status(self, channel: str, symbol: str, frame: str) -> None:
        self.publish_status(channel, symbol, frame)

    def publish(self, channel: str, payload: str) -> None:
        with self._lock:
            self._deliver(channel, payload)

    async def apublish(self, channel: str, payload: str) -> None:
        self.publish(channel, payload)

    def publish_state(self, channel: str, login: str, marker: str, frame: str) -> None:
        with self._lock:
            self._last_states[login, marker] = frame
            self._deliver(channel, frame)

    async def apublish_state(self, channel: str, login: str, marker: str, frame: str) -> None:
        self.publish_state(channel, login, marker, frame)

    def read_states(
        self, logins: Sequence[str], markers: Sequence[str]
    ) -> dict[tuple[str, str], str]:
        with self._lock:
            found = {}
            for login in logins:
                for marker in markers:
                    frame = self._last_states.get((login, marker))
                    if frame is not None:
                        found[login, marker] = frame
            return found

    async def aput_presence(
        self, process: str, counts: Mapping[str, int], gone: Iterable[str] | None, ttl: float
    ) -> bool:
        now = time.monotonic()
        with self._lock:
            if gone is None:
                self._presence[process] = (now + ttl, dict(counts))
                return True
            entry = self._presence.get(process)
            if entry is None or entry[0] < now:
                return False
            record = entry[1]
            record.update(counts)
            for login in gone:
                record.pop(login, None)
            self._presence[process] = (now + ttl, record)
            return True

    async def adrop_presence(self, process: str) -> None:
        with self._lock:
            self._presence.pop(process, None)

    def read_presence(self) -> dict[str, dict[str, int]]:
        now = time.monotonic()
        with self._lock:
            for process in [p for p, (deadline, _) in self._presence.items() if deadline < now]:
                del self._presence[process]  # its event loop ended without closing the hub
            return {process: dict(counts) for process, (_, counts) in self._presence.items()}

    async def aread_presence(self) -> dict[str, dict[str, int]]:
        return self.read_presence()

    def connect(self, handler: MessageHandler) -> MemorySubscriber:
        return MemorySubscriber(self, handler, asyncio.get_running_loop())

    # Reads for subscribers.
    def _read_last_quotes(self, symbols: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return {s: self._last_quotes[s] for s in symbols if s in self._last_quotes}

    def _read_last_statuses(self, symbols: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return {s: self._last_statuses[s] for s in symbols if s in self._last_statuses}


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

    async def last_statuses(self, symbols: Sequence[str]) -> dict[str, str]:
        return self.backend._read_last_statuses(symbols)
