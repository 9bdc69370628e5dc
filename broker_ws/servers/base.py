"""What a session needs of the ASGI server it runs under, and the guard on shortcuts.

A session talks to its server through ASGI ``send`` and ``receive``; that is
the contract, and it always works. Under daphne and uvicorn, broker_ws also
takes shortcuts through the server's own objects (writing an encoded frame
straight to the socket, seeing how many bytes the server holds for it,
spreading keepalive pings). Those objects are private to the servers and an
upgrade may rename them, so:

* each server's shortcuts live in one module (:mod:`broker_ws.servers.daphne`,
  :mod:`broker_ws.servers.uvicorn`), behind one :class:`Transport` per session,
  chosen once when the session starts (:func:`broker_ws.servers.transport_for`);
* each shortcut is a :class:`FastPath`: an unexpected error in it turns it off
  for the whole process, with one WARNING and the
  ``broker_ws_fast_path_disabled`` metric, and the call takes the public path
  instead (for a write: the server's own ASGI ``send``). A session never looks
  open while receiving nothing because a shortcut broke.

:class:`Transport` itself is the public path: any other server, and the
test communicators, get it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from broker_ws import metrics
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)

#: An ASGI ``send``.
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ConnectionGone(Exception):
    """The client's connection is closed: there is nothing left to send to.

    Raised by :meth:`Transport.write`; the session's disconnect message is on its way.
    """


class FastPath:
    """A process-wide switch for one shortcut of one server, on until it fails once."""

    __slots__ = ("enabled", "name", "server")

    def __init__(self, server: str, name: str) -> None:
        self.server = server
        self.name = name
        self.enabled = True

    def fail(self, exc: BaseException) -> None:
        """Turn the shortcut off for this process (logged and counted once)."""
        if not self.enabled:
            return
        self.enabled = False
        metrics.FAST_PATH_DISABLED.labels(server=self.server, path=self.name).inc()
        logger.warning(
            "broker_ws: the %s %s shortcut failed (%r) and is off for this process; "
            "sessions carry on through the server's ASGI interface. Is the installed "
            "%s a version broker_ws was tested with (system check broker_ws.W002)?",
            self.server,
            self.name,
            exc,
            self.server,
        )


class Transport:
    """A session's view of its server beyond ASGI: here, none (the public path).

    Subclasses add what a given server allows; every method here is the
    behaviour without any shortcut, so a subclass whose shortcut is off falls
    back by calling these.
    """

    #: The server's name, for logs and metrics ("asgi" when unknown).
    server = "asgi"
    #: Whether the server's SIGTERM handler is one :mod:`broker_ws.session.drain` wraps.
    handles_sigterm = False

    def write(self, frame: EncodedFrame) -> bool:
        """Write ``frame`` to the socket now and return True, or return False: then
        the session sends it through ASGI ``send`` (for this frame only).

        Raises:
            ConnectionGone: the connection is closed.
        """
        return False

    def write_failed(self, path: FastPath, exc: Exception) -> bool:
        """What a shortcut's write does when it raised: on a closed connection the
        client left (:class:`ConnectionGone`); otherwise the shortcut is broken, so it
        is turned off and the frame goes through ASGI ``send`` (False)."""
        if self.connection_closed():
            raise ConnectionGone() from exc
        path.fail(exc)
        return False

    def buffered(self) -> int | None:
        """Bytes the server holds for this socket, not yet written; None when the
        server does not tell (the session then has no slow-consumer policy)."""
        return None

    #: Past how many :meth:`buffered` bytes the client counts as slow.
    buffer_limit = 0

    def connection_closed(self) -> bool:
        """Whether the connection is known to be closed (the client left)."""
        return False

    async def refuse(self, scope: Any, send: Send, status: int, reason: str) -> None:
        """Refuse the WebSocket handshake with HTTP ``status`` and ``reason``.

        Through ASGI's WebSocket Denial Response extension where the server
        offers it (uvicorn): the response's status and a ``text/plain`` body.
        Elsewhere the ASGI core allows only ``websocket.close``, which servers
        answer with 403 and no reason.
        """
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = reason.encode()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "websocket.close"})

    def before_accept(self) -> None:
        """Called once, before the session sends ``websocket.accept``."""

    def after_accept(self) -> None:
        """Called once, after the session sent ``websocket.accept``."""

    def client_spoke(self) -> None:
        """Called on every message from the client."""

    def allow_close_handshake(self, seconds: float) -> None:
        """Give the client ``seconds`` to answer the close frame about to be sent."""

    def after_disconnect(self) -> None:
        """Called once, when the session has ended."""
