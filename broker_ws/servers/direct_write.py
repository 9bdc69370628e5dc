"""Writing a frame encoded once straight to the server's socket.

A quote to 1000 sessions used to cost, per session, the ASGI server's
``send`` coroutine and its framing of the text. Under daphne that was
autobahn's ``sendMessage`` → ``sendFrame`` (formatting debug-log arguments it
then drops) and Twisted's deferred write: ``transport.write`` only buffers and
registers the socket with the event loop, and the next iteration sends and
unregisters it (two ``epoll_ctl`` and a reactor dispatch per frame). Profiled
in bench/README.md, that was ~95 % of the server's CPU per delivered frame,
against ~5 % in broker_ws itself. Under uvicorn it was three coroutines, the
text encoded again and the frame serialized again, per session.

:class:`EncodedFrame` carries a frame's WebSocket wire bytes, built once for
every session that gets it, and :func:`direct_writer` returns, for a daphne
or uvicorn (websockets-sansio) session, a function that hands them to the
socket's transport: under daphne at once when nothing else waits for that
socket (as asyncio's own transports do), and otherwise queued behind what
waits through Twisted's ordinary ``write``.

Everything this relies on is checked per frame (the server's protocol, an
open connection, no compression, nothing half-sent or still to be written):
whenever a condition does not hold, the frame goes the way the server itself
would send it, so the bytes on the wire and their order are the same either
way.
"""

from __future__ import annotations

import asyncio
import functools
import pprint
import struct
import sys
from collections.abc import Callable
from typing import Any

#: First byte of an unfragmented, uncompressed text frame: FIN + opcode 1.
_TEXT_FIN = 0x81


class EncodedFrame:
    """One text frame, encoded for the wire once for all the sessions that get it."""

    __slots__ = ("_wire", "data", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = text.encode()
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        """The frame as a server sends it (RFC 6455 §5.2: servers do not mask)."""
        if self._wire is None:
            self._wire = text_frame_header(len(self.data)) + self.data
        return self._wire


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame carrying ``length`` bytes."""
    if length < 126:
        return bytes((_TEXT_FIN, length))
    if length < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, length)
    return struct.pack("!BBQ", _TEXT_FIN, 127, length)


#: Writes a frame and returns True, or returns False: then send it through
#: the ASGI ``send`` instead (the server's own path, for this frame only).
Writer = Callable[[EncodedFrame], bool]


def direct_writer(send: Any) -> Writer | None:
    """How to write frames to this session's socket directly, if its server is
    daphne or uvicorn with its websockets-sansio protocol; None for any other
    (test communicators, other servers): the ASGI ``send`` is used."""
    return _daphne_writer(send) or _uvicorn_writer(send)


def daphne_protocol(send: Any) -> Any | None:
    """The daphne protocol of this session, or None under any other server.

    daphne passes ``partial(server.handle_reply, protocol)`` as the ASGI
    ``send``; its protocol is autobahn's ``WebSocketServerProtocol``.
    """
    args = getattr(send, "args", None)
    protocol = args[0] if args else None
    if not (callable(getattr(protocol, "sendMessage", None)) and hasattr(protocol, "serverSend")):
        return None
    return protocol


def close_frame_on_failure(send: Any) -> None:
    """Under daphne, make autobahn send a close frame when it fails the connection.

    autobahn fails a connection (a message over daphne's size limit, a protocol
    error, invalid UTF-8) by dropping TCP while ``failByDrop`` is on, its default,
    which daphne never changes: the client saw 1006 instead of the 1009 (1002,
    1007) with a reason that protocol.md promises. Set per connection, before
    the accept; autobahn reads it when it fails the connection. The first
    daphne connection of a process also runs
    :func:`skip_autobahn_debug_pretty_printing`, :func:`release_upgrade_requests`
    and :func:`admit_daphne_connections`.
    """
    global _first_connection_seen
    protocol = daphne_protocol(send)
    if protocol is not None:
        protocol.failByDrop = False
        if not _first_connection_seen:  # the first daphne connection of the process
            _first_connection_seen = True
            skip_autobahn_debug_pretty_printing()
            release_upgrade_requests(send)
            admit_daphne_connections(send)


_first_connection_seen = False


def _plain_repr(obj: object, *args: Any, **kwargs: Any) -> str:
    return repr(obj)


def skip_autobahn_debug_pretty_printing() -> bool:
    """Stop autobahn pretty-printing debug-log arguments it then drops.

    ``WebSocketProtocol._connectionMade`` passes ``pformat`` of its 25 options to
    ``log.debug`` for every connection, whether or not debug logging is on: a
    tenth of the event loop's time in a reconnect storm (bench/storm.py, profiled
    with py-spy). Its module's ``pformat`` becomes ``repr``, which gives the same
    text on one line. Done once, and only while that name is still the standard
    library's ``pformat``; returns whether it is in place.
    """
    module = sys.modules.get("autobahn.websocket.protocol")
    if module is None:
        return False
    current = getattr(module, "pformat", None)
    if current is pprint.pformat:
        module.pformat = _plain_repr  # type: ignore[attr-defined]
        return True
    return current is _plain_repr


#: Seconds between two looks at whether daphne has forgotten a closed connection.
FORGOTTEN_CHECK = 1.5
#: Looks before giving up (daphne reaps once a second; a slow reap is left as it is).
FORGOTTEN_TRIES = 8


def release_upgrade_requests(send: Any) -> bool:
    """Under daphne, free each WebSocket upgrade's HTTP request by reference counting.

    daphne upgrades a connection by handing its transport from Twisted's
    ``HTTPChannel`` to a new WebSocket protocol. The channel and its request then
    refer to each other (``channel.requests``, ``request.channel``) and to nothing
    else: a reference cycle per connection that only a garbage collection frees,
    and in a connect storm, where it is promoted to the oldest generation before it
    dies, only a full one. daphne tells its server when the request is done with
    (``protocol_disconnected(request)``, right after the upgrade); the server's
    method is wrapped, once per server, to break the cycle at the next turn of the
    loop, once daphne has finished with the channel. Returns whether it is wrapped.
    """
    loop = asyncio.get_running_loop()

    def wrap(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def protocol_disconnected(disconnected: Any) -> Any:
            result = original(disconnected)
            if getattr(disconnected, "transport", True) is None and hasattr(
                disconnected, "channel"
            ):
                loop.call_soon(_break_request_cycle, disconnected)  # an upgraded request
            return result

        return protocol_disconnected

    return _wrap_once(_daphne_server(send), "protocol_disconnected", wrap)


def _daphne_server(send: Any) -> Any | None:
    """The daphne ``Server`` this session's protocol belongs to, or None."""
    server = getattr(daphne_protocol(send), "server", None)
    if server is None or not type(server).__module__.startswith("daphne."):
        return None
    return server


def _wrap_once(owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Any]) -> bool:
    """Replace ``owner.<name>`` (a method of a daphne object) by ``wrap(original)``,
    once per owner; returns whether it is wrapped. False, and nothing changed, when
    there is no owner or the attribute is not callable any more."""
    original = getattr(owner, name, None) if owner is not None else None
    if getattr(original, "_broker_ws_wrapped", False):
        return True
    if not callable(original):
        return False
    wrapped = wrap(original)
    wrapped._broker_ws_wrapped = True
    setattr(owner, name, wrapped)
    return True


#: Seconds a refused client has to close its side after the 429 before the
#: socket is aborted.
REFUSED_LINGER = 2.0
_REFUSAL_BODY = b"too many connections from this address; retry later\n"


def refusal_response(retry_after: int) -> bytes:
    """The whole HTTP answer to a connection :mod:`broker_ws.auth.admission` refuses."""
    head = (
        b"HTTP/1.1 429 Too Many Requests\r\n"
        b"Retry-After: %d\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (retry_after, len(_REFUSAL_BODY))
    )
    return head + _REFUSAL_BODY


def admit_daphne_connections(send: Any) -> bool:
    """Under daphne, let :mod:`broker_ws.auth.admission` decide every new TCP connection
    before daphne builds its HTTP protocol.

    daphne's ``HTTPFactory.buildProtocol`` is wrapped, once per server: a
    connection of an address that still has connections in its bucket gets
    daphne's protocol as before; any other gets a :class:`HeldConnection` that
    reads nothing until the admission serves it (then daphne's protocol takes
    over the transport, as daphne itself hands a transport over at the
    WebSocket upgrade) or refuses it (429). Returns whether it is wrapped.
    """
    held_class = _held_connection_class()
    if held_class is None:
        return False
    from broker_ws.auth.admission import get_admission

    admission = get_admission()

    def wrap(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def buildProtocol(addr: Any) -> Any:
            host = getattr(addr, "host", None)
            if (
                not isinstance(host, str)
                or not admission.applies_to(host)
                or admission.admit_now(host)
            ):
                return original(addr)
            held = held_class(original, addr)
            admission.wait(host, held)
            return held

        return buildProtocol

    factory = getattr(_daphne_server(send), "http_factory", None)
    return _wrap_once(factory, "buildProtocol", wrap)


@functools.cache
def _held_connection_class() -> type | None:
    """:class:`HeldConnection`, a Twisted protocol, defined once Twisted is there."""
    try:
        from twisted.internet.protocol import Protocol
    except ImportError:  # pragma: no cover - daphne always brings Twisted
        return None

    class HeldConnection(Protocol):
        """A connection accepted but not served yet: nothing of it is read, so it
        costs a socket, not a parse. See :func:`admit_daphne_connections`."""

        def __init__(self, build: Callable[[Any], Any], addr: Any) -> None:
            self._build = build
            self._addr = addr
            self._linger: asyncio.TimerHandle | None = None

        def connectionMade(self) -> None:
            transport: Any = self.transport
            transport.pauseProducing()

        def serve(self) -> None:
            transport: Any = self.transport
            if not self.connected or transport is None:
                return
            try:
                channel = self._build(self._addr)
            except Exception:  # daphne has logged it; the connection cannot be served
                transport.abortConnection()
                return
            transport.protocol = channel
            channel.makeConnection(transport)
            transport.resumeProducing()

        def refuse(self, retry_after: int) -> None:
            transport: Any = self.transport
            if not self.connected or transport is None:
                return
            # Read (and drop) what the client sent, so that the close that follows
            # is a FIN after the answer, not a reset that could discard it.
            transport.resumeProducing()
            transport.write(refusal_response(retry_after))
            transport.loseWriteConnection()
            self._linger = asyncio.get_running_loop().call_later(
                REFUSED_LINGER, transport.abortConnection
            )

        def dataReceived(self, data: bytes) -> None:
            pass  # only after a refusal: the request is not answered but by the 429

        def connectionLost(self, reason: Any = None) -> None:
            self.connected = 0
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None

    return HeldConnection


def _break_request_cycle(request: Any) -> None:
    channel = getattr(request, "channel", None)
    requests = getattr(channel, "requests", None)
    if isinstance(requests, list) and request in requests:
        requests.remove(request)
    request.channel = None


def release_when_forgotten(send: Any) -> None:
    """Under daphne, once daphne has forgotten a closed connection, clear its protocol.

    daphne's ``WebSocketProtocol`` holds Deferreds whose callbacks are its own
    bound methods (and autobahn's per-connection state refers back to it), so a
    closed connection is one reference cycle that only a garbage collection
    frees, and for a session that lived long, only a full one, which walks every
    live session (docs/deployment.md, "gc.freeze()"). Once daphne has dropped
    the protocol from ``server.connections`` (its application checker does so
    about a second after the connection ends), nothing calls it any more;
    clearing its attributes breaks the cycle and reference counting frees it.
    """
    protocol = daphne_protocol(send)
    connections = getattr(getattr(protocol, "server", None), "connections", None)
    if protocol is None or not isinstance(connections, dict):
        return
    loop = asyncio.get_running_loop()
    loop.call_later(FORGOTTEN_CHECK, _clear_if_forgotten, loop, protocol, connections, 1)


def _clear_if_forgotten(loop: Any, protocol: Any, connections: dict[Any, Any], tries: int) -> None:
    if protocol in connections or getattr(protocol, "state", None) != getattr(
        protocol, "STATE_CLOSED", object()
    ):
        if tries < FORGOTTEN_TRIES:
            loop.call_later(
                FORGOTTEN_CHECK, _clear_if_forgotten, loop, protocol, connections, tries + 1
            )
        return
    state = protocol.state
    vars(protocol).clear()
    protocol.state = state  # what a late timer of autobahn's looks at first


def allow_close_handshake(send: Any, seconds: float) -> None:
    """Under daphne, give the client ``seconds`` to answer the close frame the server
    is about to send, instead of autobahn's one second.

    autobahn aborts the connection (TCP reset) when the answer is late, and a reset
    loses what the server still buffers for the socket and what the client has not
    read yet: a client that is behind in reading loses frames sent before the close
    and the close itself, and sees 1006. Set per connection, before the close;
    autobahn reads it when it sends the close frame.
    """
    protocol = daphne_protocol(send)
    current = getattr(protocol, "closeHandshakeTimeout", None)
    if protocol is not None and isinstance(current, (int, float)):
        protocol.closeHandshakeTimeout = max(float(seconds), current)


def _daphne_writer(send: Any) -> Writer | None:
    protocol = daphne_protocol(send)
    if protocol is None:
        return None
    factory = getattr(protocol, "factory", None)
    framed_ok = (
        getattr(factory, "isServer", False)
        and not getattr(protocol, "maskServerFrames", True)
        and hasattr(protocol, "send_queue")
        and hasattr(protocol, "send_state")
    )
    return _DaphneWriter(protocol, framed_ok)


class _DaphneWriter:
    """The write function of one daphne session (see the module docstring)."""

    __slots__ = ("_framed_ok", "_protocol")

    def __init__(self, protocol: Any, framed_ok: bool) -> None:
        self._protocol = protocol
        self._framed_ok = framed_ok

    def __call__(self, frame: EncodedFrame) -> bool:
        protocol = self._protocol
        if not self._framed_ok or not self._plain_open(protocol, len(frame.data)):
            protocol.sendMessage(frame.data, False)  # raises if the socket is closed
            return True
        transport = protocol.transport
        if _idle_tcp(transport):
            wire = frame.wire
            try:
                sent = transport.socket.send(wire)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the write below finds the connection lost, as Twisted does
            if sent < len(wire):
                transport.write(wire[sent:])
            return True
        transport.write(frame.wire)
        return True

    @staticmethod
    def _plain_open(protocol: Any, length: int) -> bool:
        """Open, uncompressed, nothing queued or half-sent, within the size limits."""
        limit = protocol.maxMessagePayloadSize
        fragment = protocol.autoFragmentSize
        return (
            protocol.state == protocol.STATE_OPEN
            and protocol._perMessageCompress is None
            and not protocol.send_queue
            and protocol.send_state == protocol.SEND_STATE_GROUND
            and not (0 < limit < length)
            and not (0 < fragment < length)
        )


def _idle_tcp(transport: Any) -> bool:
    """A plain Twisted TCP transport, connected, with nothing waiting to be written.

    Then a ``send()`` now keeps the order of the bytes. A TLS transport has no
    ``socket`` of its own (its bytes must be encrypted): it is never idle here.
    """
    try:
        return bool(
            transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset
            and transport.socket is not None
        )
    except AttributeError:
        return False


def _uvicorn_writer(send: Any) -> Writer | None:
    """uvicorn passes its protocol's bound ``send`` method; only its
    websockets-sansio protocol (uvicorn's default with ``websockets`` 14 and
    later) is written to directly."""
    protocol = getattr(send, "__self__", None)
    if protocol is None or type(protocol).__name__ != "WebSocketsSansIOProtocol":
        return None
    conn = getattr(protocol, "conn", None)
    try:
        from websockets.protocol import OPEN, SERVER
    except ImportError:  # pragma: no cover - uvicorn's protocol needs websockets
        return None
    if conn is None or getattr(conn, "side", None) is not SERVER:
        return None
    return _UvicornWriter(protocol, OPEN)


class _UvicornWriter:
    """The write function of one uvicorn websockets-sansio session.

    Writes exactly what ``conn.send_text`` then ``transport.write`` would, when
    uvicorn's own ``send`` would write at once: the connection open, not
    paused for writing, no extension (permessage-deflate) negotiated, no
    fragmented message in progress and nothing of the protocol's own (a pong,
    a close) waiting to be flushed.
    """

    __slots__ = ("_open", "_protocol")

    def __init__(self, protocol: Any, open_state: Any) -> None:
        self._protocol = protocol
        self._open = open_state

    def __call__(self, frame: EncodedFrame) -> bool:
        protocol = self._protocol
        conn = protocol.conn
        if (
            protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.disconnected
            and protocol.initial_response is None
            and protocol.writable.is_set()
            and conn.state is self._open
            and not conn.extensions
            and not conn.expect_continuation_frame
            and not conn.writes
            and not protocol.transport.is_closing()
        ):
            protocol.transport.write(frame.wire)
            return True
        return False
