"""The per-login streams of one server process: sessions, seq order and gap fill.

Account frames carry their login's sequence number, given by the database
outbox (:mod:`broker_ws.outbox.store`). Per login, the last seq delivered
here is kept and only the next one is delivered: a frame that is not the
next is a gap, filled from the outbox (in a task of its own, so a slow
database delays that login only) before anything later. Sessions of a login
therefore see seq rise by one, with nothing missing or repeated; a frame is
framed once (:class:`~broker_ws.wire.encoded.EncodedFrame`) for all of them.

``MAX_SESSIONS_PER_LOGIN`` holds under any concurrency: a session takes a
slot of each of its logins before its first await and gives it back on
every path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from django.db import Error as DatabaseError  # InterfaceError is not a DatabaseError

from broker_ws import metrics
from broker_ws.backends import Subscriber
from broker_ws.conf import conf
from broker_ws.exceptions import TooManySessions
from broker_ws.outbox import store
from broker_ws.session.batching import Batcher
from broker_ws.session.sessions import Session, Spawn, guarded, wait_shared
from broker_ws.wire import channel_names
from broker_ws.wire.encoded import EncodedFrame
from broker_ws.wire.messages import AccountFrame

logger = logging.getLogger(__name__)

#: How long a gap fill keeps a login's later frames waiting while the outbox
#: cannot be read (seconds); after that they are delivered with the gap, which
#: the client sees in ``seq`` and reconciles (resume or REST).
GAP_FILL_PATIENCE = 5.0
GAP_FILL_RETRY = 0.5


def _numberings(logins: list[str]) -> list[tuple[int, str]]:
    """The current ``(seq, epoch)`` of each login, in one query (a database error
    fails them all)."""
    current = store.numbering(dict.fromkeys(logins))
    return [current[login] for login in logins]


#: Reads of logins' current seqs asked while one is under way go on the next one.
_login_seqs: Batcher[str, tuple[int, str]] = Batcher(_numberings)


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
    #: The epoch of the login's numbering, read with ``seq``.
    epoch: str = store.NO_EPOCH
    pending: dict[int, str] = field(default_factory=dict)
    reserved: int = 0
    busy: bool = False
    ready: asyncio.Future[None] | None = None

    @property
    def occupied(self) -> int:
        return len(self.sessions) + self.reserved


class LoginStreams:
    """Every login with a session here: its sessions, its seq, its waiting frames."""

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
        #: Per login channel.
        self.states: dict[str, LoginState] = {}

    def state_of(self, login: str) -> LoginState | None:
        return self.states.get(channel_names.login_channel(login))

    def sessions_of(self, login: str) -> int:
        """How many sessions of this process receive ``login``'s frames (or are
        being registered for them)."""
        state = self.state_of(login)
        return state.occupied if state is not None else 0

    def seqs_of(self, logins: Iterable[str]) -> dict[str, int]:
        """The last seq delivered here of each of these logins that has one."""
        seqs = {}
        for login in logins:
            state = self.state_of(login)
            if state is not None and state.seq is not None:
                seqs[login] = state.seq
        return seqs

    def epochs_of(self, logins: Iterable[str]) -> dict[str, str]:
        """The epoch of each of these logins whose seq was read here."""
        epochs = {}
        for login in logins:
            state = self.state_of(login)
            if state is not None and state.seq is not None:
                epochs[login] = state.epoch
        return epochs

    def needs(self, login: str, seq: int) -> bool:
        """Whether the frame ``seq`` of ``login`` is still due to local sessions."""
        state = self.state_of(login)
        return state is not None and (state.seq is None or seq > state.seq)

    # --- registering a session: reserve, read the seq, join -------------------
    def reserve(self, logins: Sequence[str]) -> list[LoginState]:
        """Take one slot of each login (before any await).

        Raises:
            TooManySessions: a login has no slot left (nothing was taken).
        """
        limit = conf.MAX_SESSIONS_PER_LOGIN
        crowded = [
            login
            for login in logins
            if (state := self.state_of(login)) is not None and state.occupied >= limit
        ]
        if crowded:
            raise TooManySessions(crowded)
        states = []
        for login in logins:
            channel = channel_names.login_channel(login)
            state = self.states.get(channel)
            if state is None:
                state = self.states[channel] = LoginState(login)
            state.reserved += 1
            states.append(state)
        return states

    async def ready(self, states: list[LoginState]) -> None:
        """Wait until each login's channel is subscribed and its current seq read
        (one shared task per login, however many sessions wait for it).

        Raises:
            Unavailable: the database could not be read, or the hub is closing.
        """
        for state in states:
            if state.seq is None:
                if state.ready is None:
                    state.ready = self._spawn(self._read_seq(state))
                await wait_shared(state.ready)

    def join(self, session: Session, states: list[LoginState]) -> dict[str, int]:
        """Turn the reserved slots into the session's; return each login's seq.

        Every frame with a higher seq reaches the session after this."""
        seqs: dict[str, int] = {}
        for state in states:
            assert state.seq is not None
            state.reserved -= 1
            state.sessions.add(session)
            seqs[state.login] = state.seq
        return seqs

    def give_back(self, states: list[LoginState]) -> None:
        """Return the slots :meth:`reserve` took."""
        for state in states:
            state.reserved -= 1
        self.release([channel_names.login_channel(s.login) for s in states if not s.occupied])

    async def _read_seq(self, state: LoginState) -> None:
        """Subscribe to a login's channel, then read its current seq (a frame committed
        in between arrives on the bus, or through the outbox poll, and waits in
        ``pending``); then deliver what waited."""
        channel = channel_names.login_channel(state.login)
        try:
            await self._subscriber.subscribe([channel])
            state.seq, state.epoch = await _login_seqs.of_this_loop().run(state.login)
            await self._advance(state)
        finally:
            state.ready = None
            if not state.occupied:
                self.release([channel])  # every session that wanted it left

    def remove(self, session: Session, logins: Iterable[str]) -> None:
        """Forget a closed session; drop logins nobody here needs."""
        emptied = []
        for login in logins:
            channel = channel_names.login_channel(login)
            state = self.states.get(channel)
            if state is not None:
                state.sessions.discard(session)
                if not state.occupied:
                    emptied.append(channel)
        self.release(emptied)

    def release(self, channels: list[str]) -> None:
        """Forget the login channels among ``channels`` that nobody here needs, and
        unsubscribe them."""
        idle = []
        for channel in channels:
            state = self.states.get(channel)
            if state is not None and not state.occupied and state.ready is None:
                del self.states[channel]
                idle.append(channel)
        if idle:
            self._unsubscribe_soon(idle)

    # --- account frames: in seq order, gaps filled off the pump -------------------
    async def deliver(self, message: AccountFrame, channel: str | None = None) -> bool:
        """Deliver (or keep for later) an account frame; False if its login has no
        session here. ``channel``: the login's channel, when the caller has it."""
        state = self.states.get(channel or channel_names.login_channel(message.login))
        if state is None:
            return False
        await self._account(state, message.seq, message.frame)
        return True

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
        encoded = EncodedFrame(frame)  # once for every session
        for session in tuple(state.sessions):
            await guarded(session.push_account(state.login, seq, encoded))

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
