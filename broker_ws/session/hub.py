"""The per-process fan-out hub.

One hub per server process (per event loop and backend) holds the only bus
subscription of that process. It subscribes to a symbol's or a login's
channel while at least one local session needs it and fans every message
out to those sessions itself. A quote therefore costs the bus one delivery
per interested process, and the frame the publisher encoded is written to
every socket as is.

Account frames carry their login's sequence number, given by the database
outbox (:mod:`broker_ws.outbox.store`). The hub keeps, per login, the last seq it
delivered and delivers only the next one: a frame that is not the next is a
gap, filled from the outbox before anything later. A poller reads the
outbox every ``OUTBOX_POLL_INTERVAL`` for frames the bus never brought
(saved by another process without Redis, or published while Redis was
down), so sessions see seq rise by one, with nothing missing or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from channels.db import database_sync_to_async
from django.db import Error as DatabaseError  # InterfaceError is not a DatabaseError

from broker_ws import metrics
from broker_ws.backends import Backend, get_backend
from broker_ws.backends.base import pack_numbered, unpack_numbered
from broker_ws.conf import conf
from broker_ws.exceptions import TooManySessions, Unavailable
from broker_ws.outbox import poller, store, tails
from broker_ws.publish import broadcasts
from broker_ws.publish.revocation import parse_revocation, revocation_payload
from broker_ws.session.batching import Batcher
from broker_ws.wire import channel_names
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)


def _current_seqs(logins: list[str]) -> list[int]:
    """The current seq of each login, in one query (a database error fails them all)."""
    current = store.current_seqs(dict.fromkeys(logins))
    return [current[login] for login in logins]


#: Reads of logins' current seqs asked while one is under way go on the next one.
_login_seqs: Batcher[str, int] = Batcher(_current_seqs)

#: Due outbox events whose frames could not be read, kept to ask for again.
MAX_UNFETCHED = 10_000

#: How long a gap fill keeps a login's later frames waiting while the outbox
#: cannot be read (seconds); after that they are delivered with the gap, which
#: the client sees in ``seq`` and reconciles (resume or REST).
GAP_FILL_PATIENCE = 5.0
GAP_FILL_RETRY = 0.5

T = TypeVar("T")


class Session(Protocol):
    """What the hub needs from a connected session."""

    #: True once the session is closed or closing: it is then never registered.
    closed: bool

    async def push(self, text: str) -> None:
        """Send one frame to the client, in order."""

    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        """Send a quote frame (conflated per ``key`` if the client is slow): done at
        once (None), or an awaitable to await."""

    async def push_account(self, login: str, seq: int, text: str) -> None:
        """Send an account frame of ``login`` numbered ``seq``."""

    async def revoke(self, revoked_at: float) -> None:
        """Close the session if its token was issued up to ``revoked_at`` (epoch s)."""


@dataclass(eq=False)
class LoginState:
    """A login's local sessions and the last seq delivered to them.

    ``seq`` is None until the current seq was read. While it is, and while a
    gap is being filled from the outbox (``busy``), frames wait in ``pending``
    and are delivered in seq order afterwards. ``reserved`` counts sessions
    that took a slot of this login and are still being registered.
    """

    login: str
    sessions: set[Session] = field(default_factory=set)
    seq: int | None = None
    pending: dict[int, str] = field(default_factory=dict)
    reserved: int = 0
    busy: bool = False
    ready: asyncio.Future[None] | None = None

    @property
    def occupied(self) -> int:
        return len(self.sessions) + self.reserved


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
        self.quotes: dict[str, set[Session]] = {}
        self.last_quote: dict[str, str] = {}
        self._quotes_ready: dict[str, asyncio.Future[None]] = {}
        #: Sessions waiting for a quote channel to be ready, per channel.
        self._quote_waiters: dict[str, int] = {}
        self.logins: dict[str, LoginState] = {}
        self.everyone: set[Session] = set()
        self.everyone_channel = channel_names.everyone_channel()
        self.users: dict[str, set[Session]] = {}
        self.revocations_channel = channel_names.revocations_channel()
        self.tails: tuple[tails.Tail, ...] | None = None
        self._tails_ready: asyncio.Future[None] | None = None
        #: ``(id, login, seq)`` of due events whose frames could not be read yet.
        self._unfetched: list[tuple[int, str, int]] = []
        self._broadcasts_seen: set[int] = set()
        self._broadcasts_order: deque[int] = deque()
        self._inbox: deque[tuple[str, str]] = deque()
        self._wakeup = asyncio.Event()
        self._tail_batches: deque[poller.Batches] = deque()
        self._tails_read = asyncio.Event()
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
        self._tasks = [loop.create_task(self._pump()), loop.create_task(self._follow_outbox())]
        self._poller = poller.OutboxPoller(
            loop, lambda: self.tails, lambda: bool(self.users), self._on_tails
        )
        self._poller.start()
        self._started = True

    async def close(self) -> None:
        """Stop fanning out and polling, and close the bus connection."""
        self._closing = True
        if self._poller is not None:
            await self._poller.stop()
        tasks = [*self._tasks, *self._background]
        # Cancel until done: on Python 3.11 asyncio.wait_for can swallow a
        # cancellation that arrives as the awaited call completes.
        while any(not task.done() for task in tasks):
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
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
            channel, payload = inbox.popleft()
            try:
                await self._dispatch(channel, payload)
            except Exception:
                logger.exception("broker_ws: fan-out of a message on %s failed", channel)

    async def _dispatch(self, channel: str, payload: str) -> None:
        sessions = self.quotes.get(channel)
        if sessions is not None:
            self.last_quote[channel] = payload
            metrics.QUOTE_FRAMES.inc(len(sessions))
            encoded = EncodedFrame(payload)  # once for every session
            for session in tuple(sessions):  # the hot path: no coroutine per session
                try:
                    pending = session.offer_quote(channel, encoded)
                    if pending is not None:
                        await pending
                except Exception:
                    logger.exception("broker_ws: sending to a session failed")
            return
        state = self.logins.get(channel)
        if state is not None:
            seq, frame = unpack_numbered(payload)
            await self._account(state, seq, frame)
            return
        if channel == self.everyone_channel:
            broadcast_id, frame = unpack_numbered(payload)
            if self._first_time(broadcast_id):  # the bus and the poll both bring it
                metrics.count_frames(frame, len(self.everyone))
                for session in tuple(self.everyone):
                    await _guarded(session.push(frame))
        elif channel == self.revocations_channel:
            user_id, revoked_at = parse_revocation(payload)
            for session in tuple(self.users.get(user_id, ())):
                await _guarded(session.revoke(revoked_at))

    def _first_time(self, broadcast_id: int) -> bool:
        if broadcast_id in self._broadcasts_seen:
            return False
        self._broadcasts_seen.add(broadcast_id)
        self._broadcasts_order.append(broadcast_id)
        if len(self._broadcasts_order) > 2 * broadcasts.KEEP:
            self._broadcasts_seen.discard(self._broadcasts_order.popleft())
        return True

    # --- account frames: in seq order, gaps filled off the pump -------------------
    async def _account(self, state: LoginState, seq: int, frame: str) -> None:
        if state.seq is not None and seq <= state.seq:
            return  # already delivered (bus and outbox both bring every frame)
        if state.busy or state.seq is None:
            state.pending[seq] = frame
            return
        if seq == state.seq + 1:
            await self._deliver(state, seq, frame)
            if state.pending:
                await self._advance(state)
            return
        state.pending[seq] = frame
        self._fill_gap_soon(state)

    async def _deliver(self, state: LoginState, seq: int, frame: str) -> None:
        state.seq = seq
        metrics.count_frames(frame, len(state.sessions))
        for session in tuple(state.sessions):
            await _guarded(session.push_account(state.login, seq, frame))

    async def _advance(self, state: LoginState) -> None:
        """Deliver the pending frames that follow the last delivered one; start a gap
        fill if what is left does not follow."""
        await self._deliver_following(state)
        if state.pending and not state.busy:
            self._fill_gap_soon(state)

    async def _deliver_following(self, state: LoginState) -> None:
        """Drop pending frames already delivered; deliver those that follow in seq."""
        assert state.seq is not None
        pending = state.pending
        for seq in [s for s in pending if s <= state.seq]:
            del pending[seq]
        while state.seq + 1 in pending:
            await self._deliver(state, state.seq + 1, pending.pop(state.seq + 1))

    def _fill_gap_soon(self, state: LoginState) -> None:
        state.busy = True
        self._spawn(self._fill_gap(state))

    async def _fill_gap(self, state: LoginState) -> None:
        """Deliver the frames missing before the pending ones, read from the outbox, in
        a task of its own: a slow database delays this login's frames only, never the
        quotes or other logins' frames the pump fans out meanwhile."""
        try:
            while state.pending:
                assert state.seq is not None
                after = state.seq
                missed = await self._read_history(state.login, after)
                if missed is None:
                    # Pruned, or unreadable for too long: deliver what follows; the
                    # client sees the gap in seq and reconciles (resume or REST).
                    first = min(state.pending)
                    logger.warning(
                        "broker_ws: frames %d-%d of %s cannot be read; delivered with a gap",
                        after + 1,
                        first - 1,
                        state.login,
                    )
                    await self._deliver(state, first, state.pending.pop(first))
                else:
                    for event in missed:
                        if event.seq == state.seq + 1:
                            state.pending.pop(event.seq, None)
                            await self._deliver(state, event.seq, event.frame)
                    if state.seq == after and state.seq + 1 not in state.pending:
                        # History ends before the pending frames (not committed yet
                        # when read): deliver the first pending one with the gap.
                        first = min(state.pending)
                        await self._deliver(state, first, state.pending.pop(first))
                await self._deliver_following(state)
        except Exception:
            logger.exception("broker_ws: filling a gap of %s failed", state.login)
        finally:
            state.busy = False

    async def _read_history(self, login: str, after: int) -> list[store.Event] | None:
        """``store.history``, retried for :data:`GAP_FILL_PATIENCE` s while the
        database fails; None when pruned or still failing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GAP_FILL_PATIENCE
        while True:
            try:
                return await database_sync_to_async(store.history)(login, after)
            except DatabaseError as exc:
                if loop.time() >= deadline:
                    logger.warning("broker_ws: outbox unreadable for a gap fill (%s)", exc)
                    return None
            await asyncio.sleep(GAP_FILL_RETRY)

    # --- outbox -------------------------------------------------------------
    def _on_tails(self, batches: poller.Batches) -> None:
        """Called on the loop by the poller thread with the rows it read."""
        self._tail_batches.append(batches)
        self._tails_read.set()

    async def _follow_outbox(self) -> None:
        """Hand to the pump what the outbox poll found that the bus did not bring:
        account frames still due here, revocations and broadcasts."""
        while not self._closing:
            if not self._tail_batches:
                self._tails_read.clear()
                # Frames that could not be fetched are asked for again a poll later.
                retry = poller.poll_interval() if self._unfetched else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._tails_read.wait(), retry)
            # Everything read meanwhile in one pass (one fetch), in the order read.
            batches = list(self._tail_batches)
            self._tail_batches.clear()
            try:
                await self._take_tails(batches)
            except Exception:
                # This task must live on, as the poll thread does.
                logger.exception("broker_ws: handling what the outbox poll read failed")

    async def _take_tails(self, batches: list[poller.Batches]) -> None:
        events = [row for batch in batches for row in batch[0]]
        # The bus has usually brought these already: fetch only the frames
        # still due here (none while the bus is healthy).
        due = [row for row in [*self._unfetched, *events] if self._needs(row[1], row[2])]
        found: list[store.Event] = []
        if due:
            try:
                found = await database_sync_to_async(store.events_by_id)([row[0] for row in due])
                self._unfetched = []
            except Exception as exc:
                logger.warning("broker_ws: reading the outbox failed (%s); retrying", exc)
                self._unfetched = self._keep_unfetched(due)
        else:
            self._unfetched = []
        inbox = self._inbox
        for event in found:
            inbox.append(
                (channel_names.login_channel(event.login), pack_numbered(event.seq, event.frame))
            )
        for batch in batches:
            for _, user_id, revoked_at in batch[1]:
                if user_id in self.users:
                    inbox.append(
                        (self.revocations_channel, revocation_payload(user_id, revoked_at))
                    )
            for broadcast_id, frame in batch[2]:
                inbox.append((self.everyone_channel, pack_numbered(broadcast_id, frame)))
        if inbox:
            self._wakeup.set()

    @staticmethod
    def _keep_unfetched(due: list[tuple[int, str, int]]) -> list[tuple[int, str, int]]:
        """The events to ask for again next poll (the cursor is past them), at most
        :data:`MAX_UNFETCHED`: beyond that, during a long database outage, the oldest
        are left to the gap fill of their login's next frame, or to the client's resume."""
        if len(due) > MAX_UNFETCHED:
            logger.warning(
                "broker_ws: %d outbox frames could not be read; the oldest %d are left to "
                "gap filling and resume",
                len(due),
                len(due) - MAX_UNFETCHED,
            )
            return due[-MAX_UNFETCHED:]
        return due

    def _needs(self, login: str, seq: int) -> bool:
        """Whether the frame ``seq`` of ``login`` is still due to local sessions."""
        state = self.logins.get(channel_names.login_channel(login))
        return state is not None and (state.seq is None or seq > state.seq)

    async def _ensure_tails(self) -> None:
        """Start following the outbox tables from about now (once per hub)."""
        if self.tails is not None:
            return
        ready = self._tails_ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._tails_ready = self._spawn(self._start_tails())
        await _wait_shared(ready)

    async def _start_tails(self) -> None:
        followed = tails.followed()
        await database_sync_to_async(tails.start)(followed)
        self.tails = followed

    # --- quotes ---------------------------------------------------------
    async def add_quotes(self, session: Session, symbols: Sequence[str]) -> list[str]:
        """Subscribe ``session`` to ``symbols``; return their last quote frames.

        The session is registered before this returns, with no await between
        reading the cached last quotes and registering, so the client gets the
        snapshot and then every later quote, never an older one after a newer.
        A session that subscribes while another one's subscription of the same
        symbol is still in flight waits for it and gets the same snapshot. A
        session closed meanwhile is not registered (and gets no frames).
        """
        channels = [channel_names.quote_channel(symbol) for symbol in symbols]
        waiters = self._quote_waiters
        for channel in channels:
            waiters[channel] = waiters.get(channel, 0) + 1
        try:
            new = [i for i, channel in enumerate(channels) if channel not in self.quotes]
            if new:
                for i in new:
                    self.quotes[channels[i]] = set()
                ready = self._spawn(
                    self._open_quotes([channels[i] for i in new], [symbols[i] for i in new])
                )
                for i in new:
                    self._quotes_ready[channels[i]] = ready
            waits = {id(f): f for c in channels if (f := self._quotes_ready.get(c)) is not None}
            for shared in waits.values():
                await _wait_shared(shared)
        finally:
            for channel in channels:
                waiters[channel] -= 1
                if not waiters[channel]:
                    del waiters[channel]
        if session.closed or self._closing:
            self._release_soon(channels)
            return []
        frames = []
        for channel in channels:
            self.quotes.setdefault(channel, set()).add(session)
            frame = self.last_quote.get(channel)
            if frame is not None:
                frames.append(frame)
        return frames

    async def _open_quotes(self, channels: list[str], symbols: list[str]) -> None:
        """Subscribe new quote channels, then read their last quotes (the bus never
        fails this: it subscribes on reconnect and has no snapshot while down)."""
        try:
            await self.subscriber.subscribe(channels)
            fetched = await self.subscriber.last_quotes(symbols)
            for channel, symbol in zip(channels, symbols, strict=True):
                frame = fetched.get(symbol)
                # A live quote that arrived meanwhile is newer: keep it.
                if frame is not None and channel not in self.last_quote:
                    self.last_quote[channel] = frame
        finally:
            for channel in channels:
                self._quotes_ready.pop(channel, None)
            self._release_soon(channels)  # if every session that wanted them left

    def remove_quotes(self, session: Session, symbols: Iterable[str]) -> None:
        """Unsubscribe ``session``; drop bus subscriptions nobody here needs."""
        emptied = []
        for symbol in symbols:
            channel = channel_names.quote_channel(symbol)
            sessions = self.quotes.get(channel)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    emptied.append(channel)
        self._release_soon(emptied)

    # --- logins ---------------------------------------------------------
    def sessions_of(self, login: str) -> int:
        """How many sessions of this process receive ``login``'s frames (or are
        being registered for them)."""
        state = self.logins.get(channel_names.login_channel(login))
        return state.occupied if state is not None else 0

    def seqs_of(self, logins: Iterable[str]) -> dict[str, int]:
        """The last seq delivered here of each of these logins that has one."""
        seqs = {}
        for login in logins:
            state = self.logins.get(channel_names.login_channel(login))
            if state is not None and state.seq is not None:
                seqs[login] = state.seq
        return seqs

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
        limit = conf.MAX_SESSIONS_PER_LOGIN
        states = []
        crowded = []
        for login in logins:
            state = self.logins.get(channel_names.login_channel(login))
            if state is not None and state.occupied >= limit:
                crowded.append(login)
        if crowded:
            raise TooManySessions(crowded)
        for login in logins:
            channel = channel_names.login_channel(login)
            state = self.logins.get(channel)
            if state is None:
                state = self.logins[channel] = LoginState(login)
            state.reserved += 1
            states.append(state)
        try:
            await self._ensure_tails()
            for state in states:
                if state.seq is None:
                    if state.ready is None:
                        state.ready = self._spawn(self._read_seq(state))
                    await _wait_shared(state.ready)
        except BaseException:
            self._give_back(states)
            raise
        if session.closed or self._closing:
            self._give_back(states)
            return None
        seqs: dict[str, int] = {}
        for state in states:
            assert state.seq is not None
            state.reserved -= 1
            state.sessions.add(session)
            seqs[state.login] = state.seq
        self.users.setdefault(user_id, set()).add(session)
        self.everyone.add(session)
        return seqs

    def _give_back(self, states: list[LoginState]) -> None:
        """Return the slots :meth:`add_session` took."""
        for state in states:
            state.reserved -= 1
        self._release_soon([channel_names.login_channel(s.login) for s in states if not s.occupied])

    async def _read_seq(self, state: LoginState) -> None:
        """Subscribe to a login's channel, then read its current seq (a frame committed
        in between arrives on the bus, or through the outbox poll, and waits in
        ``pending``); then deliver what waited."""
        channel = channel_names.login_channel(state.login)
        try:
            await self.subscriber.subscribe([channel])
            state.seq = await _login_seqs.of_this_loop().run(state.login)
            await self._advance(state)
        finally:
            state.ready = None
            if not state.occupied:
                self._release_soon([channel])  # every session that wanted it left

    def remove_session(
        self,
        session: Session,
        symbols: Iterable[str],
        logins: Iterable[str],
        user_id: str | None = None,
    ) -> None:
        """Forget a closed session everywhere."""
        self.remove_quotes(session, symbols)
        self.everyone.discard(session)
        if user_id is not None and user_id in self.users:
            self.users[user_id].discard(session)
            if not self.users[user_id]:
                del self.users[user_id]
        emptied = []
        for login in logins:
            channel = channel_names.login_channel(login)
            state = self.logins.get(channel)
            if state is not None:
                state.sessions.discard(session)
                if not state.occupied:
                    emptied.append(channel)
        self._release_soon(emptied)

    def _release_soon(self, channels: list[str]) -> None:
        """Drop the local state and bus subscription of channels nobody here needs."""
        idle = []
        for channel in channels:
            if channel in self._quotes_ready or channel in self._quote_waiters:
                continue
            if channel in self.quotes and not self.quotes[channel]:
                del self.quotes[channel]
                self.last_quote.pop(channel, None)
                idle.append(channel)
            state = self.logins.get(channel)
            if state is not None and not state.occupied and state.ready is None:
                del self.logins[channel]
                idle.append(channel)
        if idle and not self._closing:
            self._spawn(self._unsubscribe(idle))

    async def _unsubscribe(self, channels: list[str]) -> None:
        try:
            await self.subscriber.unsubscribe(channels)
        except Exception as exc:
            logger.warning("broker_ws: unsubscribe failed (%s)", exc)


async def _wait_shared(task: asyncio.Future[None]) -> None:
    """Wait for a task other sessions may wait for too, without sharing their fate.

    Shielded: cancelling this waiter (its client left) leaves the task running
    for the others. If the task itself was cancelled (the hub is closing) or
    failed on a database error, the waiter gets :class:`Unavailable`.
    """
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # this waiter was cancelled, not the shared task
        raise Unavailable("the server is shutting down") from None
    except DatabaseError as exc:
        raise Unavailable("the database could not be read") from exc


async def _guarded(sending: Awaitable[None]) -> None:
    """One session's failure must not stop the fan-out to the others."""
    try:
        await sending
    except Exception:
        logger.exception("broker_ws: sending to a session failed")


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
