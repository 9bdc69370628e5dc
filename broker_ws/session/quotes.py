"""The symbol registry and quote fan-out of one server process.

A symbol's bus channel is subscribed while at least one local session
needs it. Each quote the bus brings is encoded once
(:class:`~broker_ws.wire.encoded.EncodedFrame`) and offered to every
subscribed session as is; the last one is kept for the snapshot that
answers a later subscribe. Instrument statuses (``["s", ...]``) travel on the
same channel: each is pushed to every session in order (never conflated nor
throttled) and kept as the symbol's last status, which the snapshot carries
after the last quote.

A session that subscribed with a ``max_rate`` is not in the channel's set
itself: its :class:`~broker_ws.session.throttle.ThrottleGroup` (one per
symbol and interval) is, and passes quotes on at that rate.

Ordering guarantee: a session is registered with no await between reading
the cached last quote and status and joining the symbol's sessions, so it gets
the snapshot and then every later quote and status, never an older one after
a newer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from broker_ws import metrics
from broker_ws.backends import Subscriber
from broker_ws.session.sessions import Session, Spawn, guarded, wait_shared
from broker_ws.session.throttle import ThrottleGroup
from broker_ws.wire import channel_names
from broker_ws.wire.encoded import EncodedFrame
from broker_ws.wire.frames import is_status

#: What a quote channel's set holds: sessions, and the groups of throttled ones.
Target = Session | ThrottleGroup

logger = logging.getLogger(__name__)


class QuoteFanout:
    """Which local sessions want which symbol, their last quotes, and the fan-out."""

    def __init__(
        self,
        subscriber: Subscriber,
        spawn: Spawn,
        unsubscribe_soon: Callable[[list[str]], None],
        due: Callable[[ThrottleGroup], None] | None = None,
    ) -> None:
        """``unsubscribe_soon(channels)`` drops bus subscriptions nobody here needs;
        ``due(group)`` hands a throttle group whose turn came to the hub's pump, which
        calls its :meth:`~broker_ws.session.throttle.ThrottleGroup.flush` (default: a
        task of its own)."""
        self._subscriber = subscriber
        self._spawn = spawn
        self._unsubscribe_soon = unsubscribe_soon
        self._due = due or self._flush_soon
        #: Sessions per quote channel (present, maybe empty, while subscribed), and
        #: the throttle groups of the channel's throttled sessions.
        self.sessions: dict[str, set[Target]] = {}
        #: The last quote frame of each subscribed channel.
        self.last_quote: dict[str, str] = {}
        #: The last status frame of each subscribed channel that has one.
        self.last_status: dict[str, str] = {}
        #: Throttle groups per quote channel, by interval (ms).
        self.groups: dict[str, dict[int, ThrottleGroup]] = {}
        #: The group of each throttled subscription, per session.
        self.throttled: dict[Session, dict[str, ThrottleGroup]] = {}
        #: The task subscribing a channel and reading its last quote, while in flight.
        self._opening: dict[str, asyncio.Future[None]] = {}
        #: Sessions waiting for a channel to be open, per channel.
        self.waiters: dict[str, int] = {}

    async def add(
        self,
        session: Session,
        symbols: Sequence[str],
        closing: bool = False,
        interval_ms: int | None = None,
    ) -> list[str]:
        """Subscribe ``session`` to ``symbols``; return the snapshot: per symbol, its
        last quote frame, then its last status frame (each if it has one).

        ``interval_ms``: the session gets these symbols' quotes at most once per
        that many ms (its throttle group's), None for every quote.

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
        snapshot = []
        for channel in channels:
            self._join(session, channel, interval_ms)
            quote = self.last_quote.get(channel)
            if quote is not None:
                snapshot.append(quote)
            status = self.last_status.get(channel)
            if status is not None:
                snapshot.append(status)
        return snapshot

    def _join(self, session: Session, channel: str, interval_ms: int | None) -> None:
        targets = self.sessions.setdefault(channel, set())
        if interval_ms is None:
            targets.add(session)
            return
        groups = self.groups.setdefault(channel, {})
        group = groups.get(interval_ms)
        if group is None:
            group = groups[interval_ms] = ThrottleGroup(channel, interval_ms, self._due)
            targets.add(group)
        group.sessions.add(session)
        self.throttled.setdefault(session, {})[channel] = group

    def _leave(self, session: Session, channel: str) -> ThrottleGroup | None:
        """Take ``session`` off ``channel`` (its group's last session drops the group);
        return the group it was in, if any."""
        targets = self.sessions.get(channel)
        if targets is None:
            return None
        by_channel = self.throttled.get(session)
        group = by_channel.pop(channel, None) if by_channel is not None else None
        if group is None:
            targets.discard(session)
            return None
        if not by_channel:
            del self.throttled[session]
        group.sessions.discard(session)
        if not group.sessions:
            group.close()
            targets.discard(group)
            groups = self.groups[channel]
            del groups[group.interval_ms]
            if not groups:
                del self.groups[channel]
        return group

    def interval_of(self, session: Session, symbol: str) -> int | None:
        """The throttle interval (ms) ``session`` gets ``symbol`` at; None: unthrottled
        (or not subscribed)."""
        by_channel = self.throttled.get(session)
        group = by_channel.get(channel_names.quote_channel(symbol)) if by_channel else None
        return None if group is None else group.interval_ms

    async def move(self, session: Session, symbols: Iterable[str], interval_ms: int | None) -> None:
        """Re-subscription of symbols ``session`` has: get them at ``interval_ms`` (None:
        every quote) from now on. A quote its old group held for it is given at once,
        unless its new group holds one too (the same, or a later one)."""
        for symbol in symbols:
            channel = channel_names.quote_channel(symbol)
            targets = self.sessions.get(channel)
            if targets is None or self.interval_of(session, symbol) == interval_ms:
                continue
            by_channel = self.throttled.get(session)
            old = by_channel.get(channel) if by_channel else None
            if old is None and session not in targets:
                continue  # not subscribed here
            held_frame = old.pending if old is not None else None
            self._leave(session, channel)
            self._join(session, channel, interval_ms)
            new = self.throttled.get(session, {}).get(channel)
            if held_frame is not None and (new is None or new.pending is None):
                await guarded(_sent(session.offer_quote(channel, held_frame)))

    async def _open(self, channels: list[str], symbols: list[str]) -> None:
        """Subscribe new quote channels, then read their last quotes (the bus never
        fails this: it subscribes on reconnect and has no snapshot while down)."""
        try:
            await self._subscriber.subscribe(channels)
            fetched, statuses = await asyncio.gather(
                self._subscriber.last_quotes(symbols), self._subscriber.last_statuses(symbols)
            )
            for channel, symbol in zip(channels, symbols, strict=True):
                frame = fetched.get(symbol)
                # A live quote that arrived meanwhile is newer: keep it.
                if frame is not None and channel not in self.last_quote:
                    self.last_quote[channel] = frame
                status = statuses.get(symbol)
                if status is not None and channel not in self.last_status:
                    self.last_status[channel] = status
        finally:
            for channel in channels:
                self._opening.pop(channel, None)
            self.release(channels)  # if every session that wanted them left

    def remove(self, session: Session, symbols: Iterable[str]) -> None:
        """Unsubscribe ``session``; drop bus subscriptions nobody here needs."""
        emptied = []
        for symbol in symbols:
            channel = channel_names.quote_channel(symbol)
            self._leave(session, channel)
            if channel in self.sessions and not self.sessions[channel]:
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
                self.last_status.pop(channel, None)
                idle.append(channel)
        if idle:
            self._unsubscribe_soon(idle)

    async def deliver(self, channel: str, frame: str) -> bool:
        """Fan a quote out to the channel's sessions; False if it is no quote channel
        subscribed here."""
        sessions = self.sessions.get(channel)
        if sessions is None:
            return False
        if is_status(frame):
            await self._deliver_status(channel, sessions, frame)
            return True
        self.last_quote[channel] = frame
        groups = self.groups.get(channel)
        # A throttle group counts its sessions' frames itself, when it sends.
        metrics.QUOTE_FRAMES.inc(len(sessions) - (len(groups) if groups else 0))
        encoded = EncodedFrame(frame)  # once for every session
        for session in tuple(sessions):  # the hot path: no coroutine per session
            try:
                pending = session.offer_quote(channel, encoded)
                if pending is not None:
                    await pending
            except Exception:
                logger.exception("broker_ws: sending to a session failed")
        return True

    async def _deliver_status(self, channel: str, targets: set[Target], frame: str) -> None:
        """Push a status to every session of the channel, in order, never conflated
        nor throttled, and keep it as the channel's last status."""
        self.last_status[channel] = frame
        encoded = EncodedFrame(frame)  # once for every session
        for target in tuple(targets):
            await guarded(target.push_status(channel, encoded))

    def _flush_soon(self, group: ThrottleGroup) -> None:
        """The default ``due``: flush in a task of its own (for a fan-out used without
        a hub's pump)."""
        self._spawn(group.flush())

    def close(self) -> None:
        """Stop every throttle group's timer (the hub is closing)."""
        for groups in self.groups.values():
            for group in groups.values():
                group.close()


async def _sent(sending: Awaitable[None] | None) -> None:
    if sending is not None:
        await sending
