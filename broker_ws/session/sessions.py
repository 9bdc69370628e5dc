"""What the hub and its parts need of a session, and how they wait for shared work.

The hub's parts (:mod:`~broker_ws.session.quotes`,
:mod:`~broker_ws.session.logins`, :mod:`~broker_ws.session.outbox_follower`)
see a session only through :class:`Session`, so each can be tested alone
with any object that has these methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from django.db import Error as DatabaseError  # InterfaceError is not a DatabaseError

from broker_ws.exceptions import Unavailable
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A frame to send: its text, or already encoded for every session that gets it.
Frame = str | EncodedFrame

#: Starts a task owned by the hub (referenced until done, cancelled when it closes).
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class Session(Protocol):
    """What the hub needs from a connected session."""

    #: True once the session is closed or closing: it is then never registered.
    closed: bool

    async def push(self, frame: Frame) -> None:
        """Send one frame to the client, in order."""

    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        """Send a quote frame (conflated per ``key`` if the client is slow): done at
        once (None), or an awaitable to await."""

    async def push_status(self, key: str, frame: EncodedFrame) -> None:
        """Send an instrument status frame in order, after the quotes offered under
        ``key`` before it, never conflated."""

    async def push_account(self, login: str, seq: int, frame: Frame) -> None:
        """Send an account frame of ``login`` numbered ``seq``."""

    async def revoke(self, revoked_at: float) -> None:
        """Close the session if its token was issued up to ``revoked_at`` (epoch s)."""

    # For the heartbeat (broker_ws/session/heartbeat.py): the session's frame count
    # at the sweep's last look, and when it last changed (event-loop time).
    heartbeat_mark: int
    heartbeat_since: float

    def frames_written(self) -> int:
        """How many frames were written to the client so far."""

    def stream_logins(self) -> Sequence[str]:
        """The logins whose frames the session receives."""


async def wait_shared(task: asyncio.Future[Any]) -> None:
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


async def guarded(sending: Awaitable[None]) -> None:
    """One session's failure must not stop the fan-out to the others."""
    try:
        await sending
    except Exception:
        logger.exception("broker_ws: sending to a session failed")
