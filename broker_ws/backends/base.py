"""What a backend gives broker_ws: a fan-out bus plus the last quotes.

Two halves:

* the publisher half (sync and async), callable from any process that
  publishes: a feed, a view, a task, a shell;
* the server half, used by the :class:`~broker_ws.session.hub.Hub` of a server
  process: subscribe to bus channels and read last quotes and statuses.

Account frames are numbered and stored by the database outbox
(:mod:`broker_ws.outbox.store`) before they reach a backend; the bus only carries
them fast. Payloads are the quote frame itself on a symbol's channel, else
as :mod:`broker_ws.wire.messages` encodes them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence

#: Called by a backend for every bus message: ``(channel, payload)``.
MessageHandler = Callable[[str, str], None]


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
    def publish_status(self, channel: str, symbol: str, frame: str) -> None:
        """Remember ``frame`` as ``symbol``'s last instrument status and publish it
        on the symbol's quote ``channel`` (so it keeps its order with the quotes)."""

    @abc.abstractmethod
    async def apublish_status(self, channel: str, symbol: str, frame: str) -> None:
        """Async :meth:`publish_status`."""

    @abc.abstractmethod
    def publish(self, channel: str, payload: str) -> None:
        """Publish a payload that has no state here (account frames, broadcasts)."""

    @abc.abstractmethod
    async def apublish(self, channel: str, payload: str) -> None:
        """Async :meth:`publish`."""

    def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """Publish ``(channel, payload)`` pairs in order (one round trip where possible)."""
        for channel, payload in messages:
            self.publish(channel, payload)

    # --- live account state (broker_ws/publish/state.py) --------------------
    @abc.abstractmethod
    def publish_state(self, channel: str, login: str, marker: str, frame: str) -> None:
        """Remember ``frame`` as ``login``'s last state of ``marker`` and publish it
        on the login's ``channel`` (the payload is the frame itself)."""

    @abc.abstractmethod
    async def apublish_state(self, channel: str, login: str, marker: str, frame: str) -> None:
        """Async :meth:`publish_state`."""

    @abc.abstractmethod
    def read_states(
        self, logins: Sequence[str], markers: Sequence[str]
    ) -> dict[tuple[str, str], str]:
        """The last state frame of each ``(login, marker)`` that has one. Raises the
        bus's errors."""

    # --- presence (broker_ws/session/presence.py) --------------------------
    @abc.abstractmethod
    async def aput_presence(
        self, process: str, counts: Mapping[str, int], gone: Iterable[str] | None, ttl: float
    ) -> bool:
        """Record a server process's sessions per login, for ``ttl`` seconds from now.

        ``gone`` None: ``counts`` is the whole record (it replaces what was there).
        Otherwise ``counts`` are the logins whose count changed and ``gone`` those with
        no session left; False if the record had expired meanwhile (the caller then
        sends the whole of it).
        """

    @abc.abstractmethod
    async def adrop_presence(self, process: str) -> None:
        """Delete a server process's record (its last session left, or it is closing)."""

    @abc.abstractmethod
    def read_presence(self) -> dict[str, dict[str, int]]:
        """Every live record: process -> login -> sessions. Raises the bus's errors."""

    @abc.abstractmethod
    async def aread_presence(self) -> dict[str, dict[str, int]]:
        """Async :meth:`read_presence`."""

    # --- server half ----------------------------------------------------
    @abc.abstractmethod
    def connect(self, handler: MessageHandler) -> Subscriber:
        """A bus subscriber for the running event loop, feeding ``handler``."""


class Subscriber(abc.ABC):
    """The server half: one per server process (per event loop)."""

    #: Called after the bus connection was lost and restored: whatever was
    #: published meanwhile never arrived and must be read back elsewhere.
    on_reconnect: Callable[[], None] | None = None

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
    async def last_statuses(self, symbols: Sequence[str]) -> dict[str, str]:
        """Last status frame of each symbol that has one."""
