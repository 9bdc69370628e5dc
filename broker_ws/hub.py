"""The per-process fan-out hub.

One hub per server process (per event loop and backend) holds the only bus
subscription of that process. It subscribes to a symbol's or a login's
channel while at least one local session needs it and fans every message
out to those sessions itself. A quote therefore costs the bus one delivery
per interested process, and the frame the publisher encoded is written to
every socket as is.

Account frames carry their login's sequence number, given by the database
outbox (:mod:`broker_ws.outbox`). The hub keeps, per login, the last seq it
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
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from channels.db import database_sync_to_async

from broker_ws import broadcasts, groups, metrics, outbox, poller, tails
from broker_ws.backends import Backend, get_backend
from broker_ws.backends.base import pack_numbered, unpack_numbered
from broker_ws.direct_write import EncodedFrame
from broker_ws.revocation import parse_revocation, revocation_payload

logger = logging.getLogger(__name__)

#: Due outbox events whose frames could not be read, kept to ask for again.
MAX_UNFETCHED = 10_000


class Session(Protocol):
    """What the hub needs from a connected session."""

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

    ``seq`` is None until the current seq was read; frames arriving before
    that wait in ``pending``.
    """

    login: str
    sessions: set[Session] = field(default_factory=set)
    seq: int | None = None
    pending: dict[int, str] = field(default_factory=dict)


class Hub:
    """Fan-out of one server process."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.subscriber = backend.connect(self._on_message)
        self.subscriber.on_reconnect = self._on_reconnect
        self.quotes: dict[str, set[Session]] = {}
        self.last_quote: dict[str, str] = {}
        self.logins: dict[str, LoginState] = {}
        self.everyone: set[Session] = set()
        self.everyone_channel = groups.everyone_group()
        self.users: dict[str, set[Session]] = {}
        self.revocations_channel = groups.revocations_group()
        self.tails: tuple[tails.Tail, ...] | None = None
        #: ``(id, login, seq)`` of due events whose frames could not be read yet.
        self._unfetched: list[tuple[int, str, int]] = []
        self._broadcasts_seen: set[int] = set()
        self._broadcasts_order: deque[int] = deque()
        self._inbox: deque[tuple[str, str]] = deque()
        self._wakeup = asyncio.Event()
        self._tail_batches: deque[poller.Batches] = deque()
        self._tails_read = asyncio.Event()
        self._poller: poller.OutboxPoller | None = None
        self._lock = asyncio.Lock()
        self._login_ready: dict[str, asyncio.Future[None]] = {}
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect to the bus and start the fan-out and outbox tasks (idempotent)."""
        async with self._lock:
            if self._started:
                return
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
        if self._poller is not None:
            await self._poller.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.subscriber.close()

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
        while True:
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
            await self._account(state, payload)
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

    async def _account(self, state: LoginState, payload: str) -> None:
        seq, frame = unpack_numbered(payload)
        if state.seq is None:
            state.pending[seq] = frame
            return
        if seq <= state.seq:
            return  # already delivered (bus and outbox both bring every frame)
        if seq > state.seq + 1:
            await self._fill_gap(state, seq, frame)
            return
        await self._deliver(state, seq, frame)

    async def _deliver(self, state: LoginState, seq: int, frame: str) -> None:
        state.seq = seq
        metrics.count_frames(frame, len(state.sessions))
        for session in tuple(state.sessions):
            await _guarded(session.push_account(state.login, seq, frame))

    async def _fill_gap(self, state: LoginState, seq: int, frame: str) -> None:
        """Deliver the frames between the last delivered one and ``seq``, then it."""
        assert state.seq is not None
        missed = await database_sync_to_async(outbox.history)(state.login, state.seq)
        if missed is None:
            # Pruned meanwhile: deliver what follows; the client sees the
            # gap in seq and reconciles over REST.
            logger.warning("broker_ws: history of %s does not reach seq %s", state.login, state.seq)
            missed = []
        for event in missed:
            if state.seq < event.seq <= seq:
                await self._deliver(state, event.seq, event.frame)
        if seq > state.seq:
            await self._deliver(state, seq, frame)

    # --- outbox -------------------------------------------------------------
    def _on_tails(self, batches: poller.Batches) -> None:
        """Called on the loop by the poller thread with the rows it read."""
        self._tail_batches.append(batches)
        self._tails_read.set()

    async def _follow_outbox(self) -> None:
        """Hand to the pump what the outbox poll found that the bus did not bring:
        account frames still due here, revocations and broadcasts."""
        while True:
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
        found: list[outbox.Event] = []
        if due:
            try:
                found = await database_sync_to_async(outbox.events_by_id)([row[0] for row in due])
                self._unfetched = []
            except Exception as exc:
                logger.warning("broker_ws: reading the outbox failed (%s); retrying", exc)
                self._unfetched = self._keep_unfetched(due)
        else:
            self._unfetched = []
        inbox = self._inbox
        for event in found:
            inbox.append((groups.login_group(event.login), pack_numbered(event.seq, event.frame)))
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
        state = self.logins.get(groups.login_group(login))
        return state is not None and (state.seq is None or seq > state.seq)

    async def _start_tails(self) -> None:
        """Start following the outbox tables from about now."""
        async with self._lock:
            if self.tails is None:
                followed = tails.followed()
                await database_sync_to_async(tails.start)(followed)
                self.tails = followed

    # --- quotes ---------------------------------------------------------
    async def add_quotes(self, session: Session, symbols: Sequence[str]) -> list[str]:
        """Subscribe ``session`` to ``symbols``; return their last quote frames.

        The session is registered before this returns, with no await between
        reading the cached last quotes and registering, so the client gets the
        snapshot and then every later quote, never an older one after a newer.
        """
        channels = [groups.quote_group(symbol) for symbol in symbols]
        if any(channel not in self.quotes for channel in channels):
            async with self._lock:
                # Decided under the lock: a release that held it may have just
                # dropped a channel that was there before.
                new = [i for i, channel in enumerate(channels) if channel not in self.quotes]
                for i in new:
                    self.quotes[channels[i]] = set()
                try:
                    await self.subscriber.subscribe(channels[i] for i in new)
                    fetched = await self.subscriber.last_quotes([symbols[i] for i in new])
                except BaseException:
                    for i in new:
                        if not self.quotes.get(channels[i]):
                            self.quotes.pop(channels[i], None)
                    raise
                for i in new:
                    frame = fetched.get(symbols[i])
                    # A live quote that arrived meanwhile is newer: keep it.
                    if frame is not None and channels[i] not in self.last_quote:
                        self.last_quote[channels[i]] = frame
        frames = []
        for channel in channels:
            self.quotes[channel].add(session)
            frame = self.last_quote.get(channel)
            if frame is not None:
                frames.append(frame)
        return frames

    def remove_quotes(self, session: Session, symbols: Iterable[str]) -> None:
        """Unsubscribe ``session``; drop bus subscriptions nobody here needs."""
        emptied = []
        for symbol in symbols:
            channel = groups.quote_group(symbol)
            sessions = self.quotes.get(channel)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    emptied.append(channel)
        if emptied:
            asyncio.get_running_loop().create_task(self._release(emptied))

    # --- logins ---------------------------------------------------------
    def sessions_of(self, login: str) -> int:
        """How many sessions of this process receive ``login``'s frames."""
        state = self.logins.get(groups.login_group(login))
        return len(state.sessions) if state is not None else 0

    async def add_session(
        self, session: Session, user_id: str, logins: Sequence[str]
    ) -> dict[str, int]:
        """Register an authorized session for its logins' frames, broadcasts and
        revocations; return its logins' current seq.

        Every frame with a higher seq reaches the session after this returns.
        """
        if self.tails is None:
            await self._start_tails()
        self.users.setdefault(user_id, set()).add(session)
        seqs: dict[str, int] = {}
        for login in logins:
            channel = groups.login_group(login)
            state = self.logins.get(channel)
            if state is None or state.seq is None:
                await self._ensure_login(channel, login)
                state = self.logins[channel]
            assert state.seq is not None
            state.sessions.add(session)
            seqs[login] = state.seq
        self.everyone.add(session)
        return seqs

    async def _ensure_login(self, channel: str, login: str) -> None:
        ready = self._login_ready.get(channel)
        if ready is not None:
            await asyncio.shield(ready)
            if channel in self.logins and self.logins[channel].seq is not None:
                return
        ready = asyncio.get_running_loop().create_future()
        self._login_ready[channel] = ready
        try:
            async with self._lock:
                state = self.logins.setdefault(channel, LoginState(login))
                if state.seq is None:
                    # Subscribe first, then read: a frame committed in between
                    # arrives on the bus and waits in ``pending``.
                    await self.subscriber.subscribe([channel])
                    current = await database_sync_to_async(outbox.current_seqs)([login])
                    state.seq = current[login]
                    # Frames that arrived meanwhile go back through the pump,
                    # which runs only after the caller registered its session.
                    for seq, frame in sorted(state.pending.items()):
                        self._inbox.append((channel, pack_numbered(seq, frame)))
                    state.pending.clear()
                    self._wakeup.set()
            ready.set_result(None)
        except BaseException as exc:
            failed = self.logins.get(channel)
            if failed is not None and failed.seq is None and not failed.sessions:
                del self.logins[channel]
            ready.set_exception(exc)
            ready.exception()  # mark retrieved; waiters re-raise via shield
            raise
        finally:
            self._login_ready.pop(channel, None)

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
            channel = groups.login_group(login)
            state = self.logins.get(channel)
            if state is not None:
                state.sessions.discard(session)
                if not state.sessions and state.seq is not None:
                    emptied.append(channel)
        if emptied:
            asyncio.get_running_loop().create_task(self._release(emptied))

    async def _release(self, channels: list[str]) -> None:
        async with self._lock:
            idle = []
            for channel in channels:
                if channel in self.quotes and not self.quotes[channel]:
                    del self.quotes[channel]
                    self.last_quote.pop(channel, None)
                    idle.append(channel)
                state = self.logins.get(channel)
                if state is not None and not state.sessions and channel not in self._login_ready:
                    del self.logins[channel]
                    idle.append(channel)
            if idle:
                try:
                    await self.subscriber.unsubscribe(idle)
                except Exception as exc:
                    logger.warning("broker_ws: unsubscribe failed (%s)", exc)


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
