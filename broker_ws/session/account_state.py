"""Live account state in one server process: the rate cap and the fan-out.

State frames (:mod:`broker_ws.publish.state`) arrive on a login's bus channel
beside its numbered frames and go to the same sessions: those whose token is
linked to the login, which are the only ones registered under it
(:class:`~broker_ws.session.logins.LoginStreams`). They have no seq, so
nothing here orders, stores or fills gaps: each frame replaces the previous
one of its login and marker.

Two things keep them cheap for every session:

* the rate cap, ``STATE_MAX_RATE`` frames per second of each login and
  marker, is applied here once per login and marker, before the fan-out,
  since every session of a login gets the same frames: a frame that comes
  sooner than ``1 / STATE_MAX_RATE`` after the last one delivered waits, and
  is replaced by any later one; when its turn comes the latest is delivered
  (trailing), so the last state published always arrives. Each session
  therefore gets at most that many per second, encoded once for all of them;
* a slow session conflates them as it conflates quotes, per login and marker
  (:meth:`Outgoing.offer_quote <broker_ws.session.outgoing.Outgoing.offer_quote>`):
  it gets the latest state when its socket drains, never a backlog.

Order: state frames of a login and marker arrive in the order published (the
trailing one is delivered by the hub's pump, like everything else, so it can
never overtake a later one). Against the login's numbered frames they are not
ordered: a client applies each state frame as the current value of its marker.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import Counter

from broker_ws import metrics
from broker_ws.conf import conf
from broker_ws.session.logins import LoginState
from broker_ws.wire.encoded import EncodedFrame
from broker_ws.wire.messages import state_marker

logger = logging.getLogger(__name__)


class StateDue(NamedTuple):
    """The turn of the frame waiting for ``login``'s ``marker`` has come (posted to
    the hub's pump, so that the trailing frame is delivered in order)."""

    login: LoginState
    marker: str


@dataclass(eq=False, slots=True)
class _Slot:
    """The rate cap of one login and marker."""

    #: The key a slow session conflates this login's marker under: never a quote
    #: channel (channel names have no ``/``).
    key: str
    #: Loop time of the last delivery.
    sent_at: float = float("-inf")
    #: The latest frame waiting for its turn.
    waiting: str | None = None
    #: A :class:`StateDue` is scheduled or queued for this slot.
    armed: bool = False


class StateFanout:
    """Per login and marker: the rate cap, then one encoding for every session."""

    def __init__(self, post: Callable[[StateDue], None]) -> None:
        """``post(due)`` queues a :class:`StateDue` for the hub's pump, which hands it
        back to :meth:`due`."""
        self._post = post
        #: Slots per login, dropped with the login's state when its last session leaves.
        self._slots: weakref.WeakKeyDictionary[LoginState, dict[str, _Slot]] = (
            weakref.WeakKeyDictionary()
        )
        self._counters: dict[str, Counter] = {}

    def _slot(self, login: LoginState, marker: str) -> _Slot:
        slots = self._slots.get(login)
        if slots is None:
            slots = self._slots[login] = {}
        slot = slots.get(marker)
        if slot is None:
            key = f"{login.login}/{marker}"  # conflation key
            slot = slots[marker] = _Slot(key)
        return slot

    async def deliver(self, login: LoginState, frame: str) -> None:
        """A state frame of ``login`` from the bus: deliver it now, or keep it as the
        latest until its turn."""
        slot = self._slot(login, state_marker(frame))
        rate = conf.STATE_MAX_RATE
        if rate <= 0:
            await self._fan_out(login, slot, frame)
            return
        if slot.armed:
            slot.waiting = frame  # replaces an older one: the latest is what counts
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = slot.sent_at + 1.0 / rate - now
        if wait <= 0:
            slot.sent_at = now
            await self._fan_out(login, slot, frame)
            return
        slot.waiting = frame
        slot.armed = True
        loop.call_later(wait, self._post, StateDue(login, state_marker(frame)))

    async def due(self, due: StateDue) -> None:
        """Deliver the latest frame that waited for its turn."""
        slot = self._slot(due.login, due.marker)
        frame, slot.waiting, slot.armed = slot.waiting, None, False
        if frame is None:
            return
        slot.sent_at = asyncio.get_running_loop().time()
        await self._fan_out(due.login, slot, frame)

    async def _fan_out(self, login: LoginState, slot: _Slot, frame: str) -> None:
        sessions = login.sessions
        if not sessions:
            return
        marker = state_marker(frame)
        counter = self._counters.get(marker)
        if counter is None:
            counter = self._counters[marker] = metrics.FRAMES.labels(marker=marker)
        counter.inc(len(sessions))
        encoded = EncodedFrame(frame)  # once for every session
        for session in tuple(sessions):
            try:
                pending = session.offer_quote(slot.key, encoded)
                if pending is not None:
                    await pending
            except Exception:
                logger.exception("broker_ws: sending to a session failed")
