"""Everything broker_ws does with uvicorn's and websockets' own objects.

uvicorn passes a bound method of its WebSocket protocol as a session's ASGI
``send``; the protocol's asyncio transport is the socket. Through them, a
:class:`UvicornTransport`:

* **sees the bytes waiting in the transport**, for the slow-consumer policy.
  uvicorn's ``send`` waits for the socket to drain above the transport's
  high-water mark, which would stall the fan-out of every other session of
  the process, so a session counts as slow from half that mark (or
  ``SLOW_CONSUMER_BUFFER`` if lower) and stops writing;
* **writes encoded frames straight to the transport**, under uvicorn's
  websockets-sansio protocol (its default with ``websockets`` 14 and later):
  exactly what ``conn.send_text`` then ``transport.write`` would write, when
  uvicorn's own ``send`` would write at once (the connection open, not paused
  for writing, no extension negotiated, no fragmented message in progress,
  nothing of the protocol's own waiting to be flushed). Otherwise the frame
  goes through ``send``. Through ``send``, a quote cost three coroutines, the
  text encoded again and the frame serialized again, per session.

Each is a :class:`~broker_ws.servers.base.FastPath`: an unexpected error
turns it off for the process, with one WARNING and a metric, and the session
carries on through ``send``. uvicorn pings each session from a timer of its
own: there is nothing to spread.
"""

from __future__ import annotations

from typing import Any

from broker_ws.conf import conf
from broker_ws.servers.base import FastPath, Transport
from broker_ws.wire.encoded import EncodedFrame

SERVER = "uvicorn"
DIRECT_WRITE = FastPath(SERVER, "direct write")
WRITE_BUFFER = FastPath(SERVER, "write buffer")


def transport_for(send: Any) -> UvicornTransport | None:
    """A :class:`UvicornTransport` if ``send`` is a uvicorn protocol's, else None."""
    protocol = getattr(send, "__self__", None)
    if protocol is None or not type(protocol).__module__.startswith("uvicorn."):
        return None
    return UvicornTransport(protocol)


class UvicornTransport(Transport):
    """One uvicorn session's shortcuts (see the module docstring)."""

    server = SERVER
    handles_sigterm = True

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        transport: Any = getattr(protocol, "transport", None)
        size = getattr(transport, "get_write_buffer_size", None)
        self._size = size if callable(size) else None
        self.buffer_limit = conf.SLOW_CONSUMER_BUFFER
        if self._size is not None:
            _low, high = transport.get_write_buffer_limits()
            self.buffer_limit = min(self.buffer_limit, max(high // 2, 1))
        self._open: Any = _sansio_open_state(protocol)

    def write(self, frame: EncodedFrame) -> bool:
        open_state = self._open
        if open_state is None or not DIRECT_WRITE.enabled:
            return False
        protocol = self._protocol
        try:
            conn = protocol.conn
            if (
                protocol.handshake_complete
                and not protocol.close_sent
                and not protocol.disconnected
                and protocol.initial_response is None
                and protocol.writable.is_set()
                and conn.state is open_state
                and not conn.extensions
                and not conn.expect_continuation_frame
                and not conn.writes
                and not protocol.transport.is_closing()
            ):
                protocol.transport.write(frame.wire)
                return True
            return False
        except Exception as exc:
            return self.write_failed(DIRECT_WRITE, exc)

    def buffered(self) -> int | None:
        size = self._size
        if size is None or not WRITE_BUFFER.enabled:
            return None
        try:
            return int(size())
        except Exception as exc:
            WRITE_BUFFER.fail(exc)
            return None

    def connection_closed(self) -> bool:
        protocol = self._protocol
        transport: Any = getattr(protocol, "transport", None)
        try:
            return bool(
                transport is None
                or transport.is_closing()
                or getattr(protocol, "close_sent", False)
                or getattr(protocol, "disconnected", False)
            )
        except Exception:
            return False


def _sansio_open_state(protocol: Any) -> Any | None:
    """websockets' ``OPEN`` state if ``protocol`` is uvicorn's websockets-sansio
    protocol on the server side (its frames can then be written here), else None."""
    if type(protocol).__name__ != "WebSocketsSansIOProtocol":
        return None
    try:
        from websockets.protocol import OPEN, SERVER
    except ImportError:  # pragma: no cover - uvicorn's protocol needs websockets
        return None
    conn = getattr(protocol, "conn", None)
    if conn is None or getattr(conn, "side", None) is not SERVER:
        return None
    return OPEN
