"""What a backend gives broker_ws: a fan-out bus plus the shared state.

Two halves:

* the publisher half (sync and async), callable from any process that
  publishes: a feed, a view, a task, a shell;
* the server half, used by the :class:`~broker_ws.hub.Hub` of a server
  process: subscribe to bus channels, read last quotes, sequence numbers
  and history.

Account frames are appended to a login's history, given the next sequence
number and published as one atomic step, so every subscriber sees a login's
frames in seq order whichever process saved them. The payload published on
a login channel is ``"<seq> <frame>"``; on other channels it is the frame.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence

#: Called by a backend for every bus message: ``(channel, payload)``.
MessageHandler = Callable[[str, str], None]

AccountParts = Sequence[tuple[str, str]]


def pack_account(seq: int, frame: str) -> str:
    """Payload of a login-channel message."""
    return f"{seq} {frame}"


def unpack_account(payload: str) -> tuple[int, str]:
    """Invert :func:`pack_account`."""
    seq, _, frame = payload.partition(" ")
    return int(seq), frame


class Backend(abc.ABC):
    """Publisher half plus a factory for the per-event-loop server half."""

    # --- publisher half -------------------------------------------------
    @abc.abstractmethod
    def publish_quote(self, channel: str, symbol: str, frame: str) -> None:
        """Remember ``frame`` as ``symbol``'s last quote and publish it."""

    @abc.abstractmethod
    async def apublish_quote(self, channel: str, symbol: str, frame: str) -> None:
        """Async :meth:`publish_quote`."""

    @abc.abstractmethod
    def append_account(self, channel: str, parts: AccountParts) -> list[int]:
        """Number, store and publish account frames of one login, in order.

        ``parts`` are ``(head, tail)`` pairs from :mod:`broker_ws.frames`;
        returns the sequence numbers given.
        """

    @abc.abstractmethod
    async def aappend_account(self, channel: str, parts: AccountParts) -> list[int]:
        """Async :meth:`append_account`."""

    @abc.abstractmethod
    def publish(self, channel: str, frame: str) -> None:
        """Publish a frame that has no state (broadcast notifications)."""

    @abc.abstractmethod
    async def apublish(self, channel: str, frame: str) -> None:
        """Async :meth:`publish`."""

    # --- server half ----------------------------------------------------
    @abc.abstractmethod
    def connect(self, handler: MessageHandler) -> Subscriber:
        """A bus subscriber for the running event loop, feeding ``handler``."""


class Subscriber(abc.ABC):
    """The server half: one per server process (per event loop)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the bus connection; messages flow to the handler after this."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving and release connections."""

    @abc.abstractmethod
    async def subscribe(self, channels: Iterable[str]) -> None:
        """Receive these channels; returns once the bus confirmed."""

    @abc.abstractmethod
    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop receiving these channels."""

    @abc.abstractmethod
    async def last_quotes(self, symbols: Sequence[str]) -> dict[str, str]:
        """Last quote frame of each symbol that has one."""

    @abc.abstractmethod
    async def current_seq(self, channel: str) -> int:
        """Last sequence number given on a login channel (0 if none)."""

    @abc.abstractmethod
    async def history(self, channel: str, after: int) -> list[tuple[int, str]] | None:
        """Frames with seq > ``after``, in order; None when history is too short."""
