"""What the outbox poll finds that the bus did not bring, handed to the hub as values.

The poller (:mod:`broker_ws.outbox.poller`) reads the new rows of the
outbox tables in a thread every ``OUTBOX_POLL_INTERVAL``: account events
(id, login, seq), revocations and broadcasts. The bus has usually brought
the account frames already; :class:`OutboxFollower` fetches only the frames
still due to local sessions (none while the bus is healthy) and hands
everything as typed messages (:mod:`broker_ws.wire.messages`) to the hub's
pump, which dispatches them exactly as it does what the bus brings.

A fetch that fails is retried a poll later for at most
:data:`MAX_UNFETCHED` events; older ones are left to the gap fill of their
login's next frame, or to the client's resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from channels.db import database_sync_to_async

from broker_ws.outbox import poller, store, tails
from broker_ws.session.sessions import Spawn, wait_shared
from broker_ws.wire.messages import AccountFrame, Broadcast, Message, Revoked

logger = logging.getLogger(__name__)

#: Due outbox events whose frames could not be read, kept to ask for again.
MAX_UNFETCHED = 10_000


class OutboxFollower:
    """Turns what each outbox poll read into messages for the hub."""

    def __init__(
        self,
        spawn: Spawn,
        needs: Callable[[str, int], bool],
        wants_user: Callable[[str], bool],
        emit: Callable[[list[Message]], None],
    ) -> None:
        """``needs(login, seq)``: whether a frame is still due here;
        ``wants_user(user_id)``: whether a session of that user is here;
        ``emit(messages)``: hands messages to the hub's pump, in order."""
        self._spawn = spawn
        self._needs = needs
        self._wants_user = wants_user
        self._emit = emit
        #: The outbox tables followed, once :meth:`ensure_tails` ran.
        self.tails: tuple[tails.Tail, ...] | None = None
        self._tails_ready: asyncio.Future[None] | None = None
        #: ``(id, login, seq)`` of due events whose frames could not be read yet.
        self._unfetched: list[tuple[int, str, int]] = []
        self._batches: deque[poller.Batches] = deque()
        self._read = asyncio.Event()
        self.closing = False

    async def ensure_tails(self) -> None:
        """Start following the outbox tables from about now (once per hub).

        Raises:
            Unavailable: the database could not be read.
        """
        if self.tails is not None:
            return
        ready = self._tails_ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._tails_ready = self._spawn(self._start_tails())
        await wait_shared(ready)

    async def _start_tails(self) -> None:
        followed = tails.followed()
        await database_sync_to_async(tails.start)(followed)
        self.tails = followed

    def on_tails(self, batches: poller.Batches) -> None:
        """Called on the loop by the poller thread with the rows it read."""
        self._batches.append(batches)
        self._read.set()

    async def run(self) -> None:
        """Hand to the pump, until closing, what each poll found."""
        while not self.closing:
            if not self._batches:
                self._read.clear()
                # Frames that could not be fetched are asked for again a poll later.
                retry = poller.poll_interval() if self._unfetched else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._read.wait(), retry)
            # Everything read meanwhile in one pass (one fetch), in the order read.
            batches = list(self._batches)
            self._batches.clear()
            try:
                await self._take(batches)
            except Exception:
                # This task must live on, as the poll thread does.
                logger.exception("broker_ws: handling what the outbox poll read failed")

    async def _take(self, batches: list[poller.Batches]) -> None:
        events = [row for batch in batches for row in batch[0]]
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
        messages: list[Message] = [AccountFrame(e.login, e.seq, e.frame) for e in found]
        for batch in batches:
            for _, user_id, revoked_at in batch[1]:
                if self._wants_user(user_id):
                    messages.append(Revoked(user_id, revoked_at.timestamp()))
            for broadcast_id, frame in batch[2]:
                messages.append(Broadcast(broadcast_id, frame))
        if messages:
            self._emit(messages)

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
