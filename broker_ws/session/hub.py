"""The per-process fan-out hub: the lifecycle, the pump and the dispatch.

One hub per server process (per event loop and backend) holds the only bus
subscription of that process. It subscribes to a symbol's or a login's
channel while at least one local session needs it and fans every message
out to those sessions itself. A quote therefore costs the bus one delivery
per interested process, and each frame is encoded once for all the
sessions that get it.

Everything the bus brings and everything the outbox poll finds goes through
one queue and one task, the pump, in the order it arrived; the pump hands
each message to the part that owns it:

* quotes and instrument statuses to :class:`~broker_ws.session.quotes.QuoteFanout`
  (the symbol registry, last quotes and statuses, the fan-out), and the held
  quotes of its :class:`~broker_ws.session.throttle.ThrottleGroup` (``max_rate``)
  when their turn comes, so they keep their order with the statuses;
* account frames to :class:`~broker_ws.session.logins.LoginStreams` (per
  login: seq order, pending frames, gap fill from the outbox);
* state frames, which share a login's channel (a payload that starts with
  ``[``, where numbered ones start with a digit), to
  :class:`~broker_ws.session.account_state.StateFanout` (rate cap, one encoding
  for the login's sessions), which also posts the trailing frames it held back
  to the pump, so they keep their order;
* broadcasts (de-duplicated: the bus and the poll both bring them) and
  revocations to the sessions the hub keeps itself.

:class:`~broker_ws.session.presence.PresenceReporter` keeps the hub's
sessions per login on the bus, for :func:`broker_ws.presence`;
:class:`~broker_ws.session.heartbeat.Heartbeats` sends ``h`` frames to the
sessions that were sent nothing for a while.

:class:`~broker_ws.session.outbox_follower.OutboxFollower` turns each poll of
the outbox (:mod:`broker_ws.outbox.poller`) into typed messages for the pump:
frames saved by another process without Redis, or published while Redis was
down, so sessions see seq rise by one, with nothing missing or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from broker_ws import metrics
from broker_ws.backends import Backend, get_backend
from broker_ws.outbox import poller
from broker_ws.publish import broadcasts
from broker_ws.session.account_state import StateDue, StateFanout
from broker_ws.session.heartbeat import Heartbeats
from broker_ws.session.logins import LoginStreams
from broker_ws.session.outbox_follower import OutboxFollower
from broker_ws.session.presence import PresenceReporter
from broker_ws.session.quotes import QuoteFanout
from broker_ws.session.sessions import Session, guarded
from broker_ws.session.throttle import ThrottleGroup
from broker_ws.wire import channel_names
from broker_ws.wire.encoded import EncodedFrame
from broker_ws.wire.messages import (
    AccountFrame,
    Broadcast,
    Message,
    Revoked,
    decode_numbered,
    decode_revocation,
    is_state,
)

__all__ = ["Hub", "Session", "close_hubs", "get_hub"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Hub:
    """Fan-out of one server process.

    Nothing here holds a lock across a network round trip: each login's seq
    read and each batch of new quote channels is one task owned by the hub,
    which every session that needs it awaits (shielded), so a client that
    leaves, or whose authorization is cancelled, affects no other session, and
    a stalled database or bus delays only the sessions that wait on it.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.subscriber = backend.connect(self._on_message)
        self.subscriber.on_reconnect = self._on_reconnect
        self.quotes = QuoteFanout(
            self.subscriber, self._spawn, self._unsubscribe_soon, self._post_throttled
        )
        self.logins = LoginStreams(self.subscriber, self._spawn, self._unsubscribe_soon)
        self.states = StateFanout(self._post_due)
        self.everyone: set[Session] = set()
        self.everyone_channel = channel_names.everyone_channel()
        self.users: dict[str, set[Session]] = {}
        self.revocations_channel = channel_names.revocations_channel()
        self.outbox = OutboxFollower(
            self._spawn,
            needs=lambda login, seq: self.logins.needs(login, seq),
            wants_user=lambda user_id: user_id in self.users,
            emit=self._take_messages,
        )
        self.presence = PresenceReporter(backend, self._session_counts)
        self.heartbeats = Heartbeats(lambda: self.everyone, self.logins.seqs_of)
        self._broadcasts_seen: set[int] = set()
        self._broadcasts_order: deque[int] = deque()
        #: What the bus brought, ``(channel, payload)``, and what the outbox poll
        #: found, as messages; in the order it arrived.
        self._inbox: deque[tuple[str, str] | Message | StateDue | ThrottleGroup] = deque()
        self._wakeup = asyncio.Event()
        self._poller: poller.OutboxPoller | None = None
        self._starting: asyncio.Future[None] | None = None
        self._started = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        #: Background tasks (seq reads, gap fills, releases): referenced until done,
        #: so the garbage collector cannot take one mid-run.
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Connect to the bus and start the fan-out and outbox tasks (idempotent).

        A bus that cannot be reached does not fail this: the subscriber keeps
        trying in the background (one log line per outage), account frames
        reach sessions through the outbox meanwhile, quotes once it is back.
        """
        if self._started:
            return
        if self._starting is None:
            self._starting = self._spawn(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await self.subscriber.start()
        await self.subscriber.subscribe([self.everyone_channel, self.revocations_channel])
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump()),
            loop.create_task(self.outbox.run()),
            loop.create_task(self.presence.run()),
            loop.create_task(self.heartbeats.run()),
        ]
        self._poller = poller.OutboxPoller(
            loop, lambda: self.outbox.tails, lambda: bool(self.users), self.outbox.on_tails
        )
        self._poller.start()
        self._started = True

    async def close(self) -> None:
        """Stop fanning out and polling, and close the bus connection."""
        self._closing = True
        self.quotes.close()  # the throttle groups' timers
        self.outbox.closing = True
        if self._poller is not None:
            await self._poller.stop()
        tasks = [*self._tasks, *self._background]
        # Cancel until done: on Python 3.11 asyncio.wait_for can swallow a
        # cancellation that arrives as the awaited call completes.
        while any(not task.done() for task in tasks):
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
        if self._started:
            await self.presence.close()
        await self.subscriber.close()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task of the hub's own, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- inbound ------------------------------------------------------------
    def _on_message(self, channel: str, payload: str) -> None:
        self._inbox.append((channel, payload))
        self._wakeup.set()

    def _take_messages(self, messages: list[Message]) -> None:
        self._inbox.extend(messages)
        self._wakeup.set()

    def _post_throttled(self, group: ThrottleGroup) -> None:
        """A throttle group's turn came: its held quote goes out from the pump, in
        order with the symbol's statuses."""
        self._inbox.append(group)
        self._wakeup.set()

    def _post_due(self, due: StateDue) -> None:
        self._inbox.append(due)
        self._wakeup.set()

    def _on_reconnect(self) -> None:
        # Whatever was published while the bus was down is in the outbox.
        if self._poller is not None:
            self._poller.poll_now()

    async def _pump(self) -> None:
        inbox = self._inbox
        while not self._closing:
            if not inbox:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = inbox.popleft()
            try:
                # A bus message is a plain (channel, payload) pair; a message the
                # outbox poll found is already decoded (a NamedTuple).
                if type(item) is tuple:
                    await self._dispatch_bus(*item)
                else:
                    await self._dispatch(item)  # type: ignore[arg-type]
            except Exception:
                what = item[:1] if isinstance(item, tuple) else item
                logger.exception("broker_ws: fan-out of %r failed", what)

    async def _dispatch_bus(self, channel: str, payload: str) -> None:
        """Decode what the bus brought, once, and dispatch it."""
        if await self.quotes.deliver(channel, payload):  # the hot path first
            return
        if channel == self.everyone_channel:
            await self._broadcast(Broadcast(*decode_numbered(payload)))
        elif channel == self.revocations_channel:
            await self._revoke(decode_revocation(payload))
        elif channel in self.logins.states:
            if is_state(payload):
                await self.states.deliver(self.logins.states[channel], payload)
                return
            seq, frame = decode_numbered(payload)
            login = self.logins.states[channel].login
            await self.logins.deliver(AccountFrame(login, seq, frame), channel)

    async def _dispatch(self, message: Message | StateDue | ThrottleGroup) -> None:
        if isinstance(message, ThrottleGroup):
            await message.flush()
        elif isinstance(message, StateDue):
            await self.states.due(message)
        elif isinstance(message, AccountFrame):
            await self.logins.deliver(message)
        elif isinstance(message, Broadcast):
            await self._broadcast(message)
        else:
            await self._revoke(message)

    async def _broadcast(self, broadcast: Broadcast) -> None:
        if not self._first_time(broadcast.id):  # the bus and the poll both bring it
            return
        metrics.count_frames(broadcast.frame, len(self.everyone))
        encoded = EncodedFrame(broadcast.frame)  # once for every session
        for session in tuple(self.everyone):
            await guarded(session.push(encoded))

    async def _revoke(self, revoked: Revoked) -> None:
        for session in tuple(self.users.get(revoked.user_id, ())):
            await guarded(session.revoke(revoked.revoked_at))

    def _first_time(self, broadcast_id: int) -> bool:
        if broadcast_id in self._broadcasts_seen:
            return False
        self._broadcasts_seen.add(broadcast_id)
        self._broadcasts_order.append(broadcast_id)
        if len(self._broadcasts_order) > 2 * broadcasts.KEEP:
            self._broadcasts_seen.discard(self._broadcasts_order.popleft())
        return True

    # --- sessions -------------------------------------------------------------
    async def add_quotes(
        self, session: Session, symbols: Sequence[str], interval_ms: int | None = None
    ) -> list[str]:
        """Subscribe ``session`` to ``symbols``; return their last quote frames
        (:meth:`QuoteFanout.add <broker_ws.session.quotes.QuoteFanout.add>`)."""
        return await self.quotes.add(session, symbols, self._closing, interval_ms)

    async def move_quotes(
        self, session: Session, symbols: Iterable[str], interval_ms: int | None
    ) -> None:
        """Re-subscription: ``session`` gets these symbols (it has them already) at
        ``interval_ms`` from now on, None for every quote
        (:meth:`QuoteFanout.move <broker_ws.session.quotes.QuoteFanout.move>`)."""
        await self.quotes.move(session, symbols, interval_ms)

    def remove_quotes(self, session: Session, symbols: Iterable[str]) -> None:
        """Unsubscribe ``session``; drop bus subscriptions nobody here needs."""
        self.quotes.remove(session, symbols)

    def sessions_of(self, login: str) -> int:
        """How many sessions of this process receive ``login``'s frames (or are
        being registered for them)."""
        return self.logins.sessions_of(login)

    def seqs_of(self, logins: Iterable[str]) -> dict[str, int]:
        """The last seq delivered here of each of these logins that has one."""
        return self.logins.seqs_of(logins)

    def epochs_of(self, logins: Iterable[str]) -> dict[str, str]:
        """The epoch of each of these logins' numbering, as read with its seq."""
        return self.logins.epochs_of(logins)

    async def add_session(
        self, session: Session, user_id: str, logins: Sequence[str]
    ) -> dict[str, int] | None:
        """Register an authorized session for its logins' frames, broadcasts and
        revocations; return its logins' current seq, or None if the session was
        closed meanwhile (it is then not registered anywhere).

        Every frame with a higher seq reaches the session after this returns.
        The session takes a slot of each login before the first await and
        gives it back on every path, so ``MAX_SESSIONS_PER_LOGIN`` holds under
        any concurrency.

        Raises:
            TooManySessions: a login has no slot left (nothing was taken).
            Unavailable: the database could not be read.
        """
        states = self.logins.reserve(logins)
        try:
            await self.outbox.ensure_tails()
            await self.logins.ready(states)
        except BaseException:
            self.logins.give_back(states)
            raise
        if session.closed or self._closing:
            self.logins.give_back(states)
            return None
        seqs = self.logins.join(session, states)
        self.users.setdefault(user_id, set()).add(session)
        self.everyone.add(session)
        self.presence.changed()
        return seqs

    def remove_session(
        self,
        session: Session,
        symbols: Iterable[str],
        logins: Iterable[str],
        user_id: str | None = None,
    ) -> None:
        """Forget a closed session everywhere."""
        self.quotes.remove(session, symbols)
        self.everyone.discard(session)
        if user_id is not None and user_id in self.users:
            self.users[user_id].discard(session)
            if not self.users[user_id]:
                del self.users[user_id]
        self.logins.remove(session, logins)
        self.presence.changed()

    def _session_counts(self) -> dict[str, int]:
        """Authorized sessions per login here (for presence)."""
        return {s.login: len(s.sessions) for s in self.logins.states.values() if s.sessions}

    # --- bus subscriptions ------------------------------------------------------
    def _unsubscribe_soon(self, channels: list[str]) -> None:
        """Drop the bus subscription of channels nobody here needs any more."""
        if channels and not self._closing:
            self._spawn(self._unsubscribe(channels))

    async def _unsubscribe(self, channels: list[str]) -> None:
        try:
            await self.subscriber.unsubscribe(channels)
        except Exception as exc:
            logger.warning("broker_ws: unsubscribe failed (%s)", exc)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Hub]] = (
    weakref.WeakKeyDictionary()
)


async def get_hub() -> Hub:
    """The started hub of the running event loop for the current backend."""
    loop = asyncio.get_running_loop()
    backend = get_backend()
    per_loop = _hubs.setdefault(loop, {})
    hub = per_loop.get(id(backend))
    if hub is None:
        hub = Hub(backend)
        per_loop[id(backend)] = hub
    if not hub._started:
        await hub.start()
    return hub


async def close_hubs() -> None:
    """Close every hub of the running event loop (tests, graceful shutdown)."""
    loop = asyncio.get_running_loop()
    for hub in list(_hubs.pop(loop, {}).values()):
        await hub.close()
