"""Throttled quote delivery: the sessions that asked for one symbol at one ``max_rate``.

A subscribe with ``"max_rate": R`` (:mod:`broker_ws.wire.protocol`) puts the
session, for each of those symbols, into the :class:`ThrottleGroup` of that
symbol and that interval, which the process's
:class:`~broker_ws.session.quotes.QuoteFanout` creates on first use and drops
with its last session. The fan-out offers each quote to the group once, as
to a session; the group passes it on to its sessions at most once per
interval, so the frame is encoded once per quote for every session of the
process, and there is one timer per group, none per session:

* leading: a quote that comes when the group has sent nothing for an interval
  goes out at once;
* trailing: one that comes sooner is held, replaced by any later one, and sent
  when the interval has passed, so the latest quote always arrives;
* statuses are never throttled: a status first sends the quote held (published
  before it), then itself, so the order of quotes and statuses holds.

The timer does not send by itself: it posts the group to the hub's pump
(``due``), which calls :meth:`ThrottleGroup.flush` in turn with everything
else the pump delivers, so a held quote can never overtake a later status of
its symbol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker_ws import metrics
from broker_ws.session.sessions import Session, guarded
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)

#: How much earlier than its turn a flush may run and still send (an event loop's
#: timers may fire up to its clock resolution early).
_EARLY = 1e-6


class ThrottleGroup:
    """The sessions that get one symbol's quotes at most once per interval."""

    __slots__ = (
        "_due",
        "_timer",
        "closed",
        "interval",
        "interval_ms",
        "key",
        "next_at",
        "pending",
        "scheduled",
        "sessions",
    )

    def __init__(self, key: str, interval_ms: int, due: Callable[[ThrottleGroup], None]) -> None:
        """``key``: the symbol's quote channel (the slow-consumer conflation key).
        ``due(group)`` hands the group to the hub's pump, which calls :meth:`flush`."""
        self.key = key
        self.interval_ms = interval_ms
        self.interval = interval_ms / 1000
        self.sessions: set[Session] = set()
        #: The latest quote waiting for its turn.
        self.pending: EncodedFrame | None = None
        #: Loop time from which the next quote may go out.
        self.next_at = float("-inf")
        #: A flush is due: its timer runs, or the pump has it queued.
        self.scheduled = False
        self.closed = False
        self._due = due
        self._timer: asyncio.TimerHandle | None = None

    # --- what the fan-out calls, as for a session ----------------------------------
    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        """A quote of the group's symbol: sent at once if the group's turn has come,
        else held as the latest until it does."""
        if self.closed:
            return None
        now = asyncio.get_running_loop().time()
        if not self.scheduled and now + _EARLY >= self.next_at:
            self.next_at = now + self.interval
            return self._fan(frame)
        self.pending = frame
        if not self.scheduled:
            self._schedule(self.next_at - now)
        return None

    async def push_status(self, key: str, frame: EncodedFrame) -> None:
        """A status of the group's symbol: the held quote first (at once), then the
        status to every session, never throttled."""
        if self.closed:
            return
        held = self.pending
        if held is not None:
            self.pending = None
            self.next_at = asyncio.get_running_loop().time() + self.interval
            sending = self._fan(held)
            if sending is not None:
                await sending
        for session in tuple(self.sessions):
            await guarded(session.push_status(key, frame))

    # --- the timer and the pump ------------------------------------------------
    def _schedule(self, delay: float) -> None:
        self.scheduled = True
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self.closed:
            self._due(self)

    async def flush(self) -> None:
        """The pump's turn for this group: send the held quote if its time has come
        (a status may have sent one meanwhile and moved the turn on)."""
        if self.closed:
            return
        self.scheduled = False
        if self.pending is None:
            return
        now = asyncio.get_running_loop().time()
        if now + _EARLY < self.next_at:
            self._schedule(self.next_at - now)
            return
        frame, self.pending = self.pending, None
        self.next_at = now + self.interval
        sending = self._fan(frame)
        if sending is not None:
            await sending

    def close(self) -> None:
        """The group's last session left (or the hub closes): stop its timer."""
        self.closed = True
        self.pending = None
        self.sessions.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- sending --------------------------------------------------------------
    def _fan(self, frame: EncodedFrame) -> Awaitable[None] | None:
        """Offer ``frame`` to every session: done at once (None), or an awaitable
        for the sessions that could not take it synchronously."""
        sessions = tuple(self.sessions)
        metrics.QUOTE_FRAMES.inc(len(sessions))
        waiting: list[Awaitable[None]] = []
        for session in sessions:
            try:
                pending = session.offer_quote(self.key, frame)
            except Exception:
                logger.exception("broker_ws: sending to a session failed")
                continue
            if pending is not None:
                waiting.append(pending)
        return _in_turn(waiting) if waiting else None


async def _in_turn(sendings: list[Awaitable[None]]) -> None:
    for sending in sendings:
        await guarded(sending)
