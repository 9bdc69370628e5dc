"""Everything broker_ws does with daphne's, autobahn's and Twisted's own objects.

daphne passes ``partial(server.handle_reply, protocol)`` as a session's ASGI
``send``; the protocol is autobahn's ``WebSocketServerProtocol`` on a Twisted
transport. Through them, a :class:`DaphneTransport`:

* **writes encoded frames straight to the socket.** Through ``send``, a quote
  to 1000 sessions cost, per session, daphne's reply coroutine, autobahn's
  framing (formatting debug-log arguments it then drops) and Twisted's
  deferred write (two ``epoll_ctl`` and a reactor dispatch per frame): ~95 %
  of the server's CPU per delivered frame (bench/README.md). When nothing
  else waits for the socket, the frame's wire bytes go to ``socket.send`` at
  once, as asyncio's own transports do; otherwise behind what waits, through
  Twisted's ``write``; a frame the shortcut cannot take (compression, a
  fragmented message in progress, over the size limits, not open) goes
  through autobahn's ``sendMessage``. The bytes and their order are the same
  either way.
* **sees the bytes Twisted still holds** for the socket (daphne's ``send``
  never blocks, so a stalled client would otherwise make it buffer without
  bound), for the slow-consumer policy;
* **gets a close frame when autobahn fails a connection** (``failByDrop``
  off: a message over the size limit is a 1009 with a reason, not a dropped
  TCP connection), and more than autobahn's one second to answer the server's
  own close when the client is behind in reading;
* **spreads daphne's keepalive pings.** daphne pings a session
  ``--ping-interval`` s after it last heard from it, from one callback every
  2 s; sessions that connected together (after a restart) are pinged in the
  same pass, every interval: 2000 pings holding the loop at once. Each
  session gets a random phase (:class:`PingPhase`): after daphne restarts its
  ping clock, the clock is moved back by the phase, so pings come sooner
  than daphne would send them, never later;
* **frees closed connections by reference counting**: a closed daphne
  connection and each upgrade's HTTP request are reference cycles only a
  garbage collection frees (a full one, for long-lived sessions, which walks
  every live session: docs/deployment.md, "gc.freeze()");
* **admits new TCP connections** through :mod:`broker_ws.auth.admission`
  before daphne builds its HTTP protocol (:func:`admit_daphne_connections`).

Each of these is a :class:`~broker_ws.servers.base.FastPath`: an unexpected
error (an attribute renamed by an upgrade) turns it off for the process,
with one WARNING and a metric, and the session carries on through ``send``.
"""

from __future__ import annotations

import asyncio
import functools
import pprint
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from broker_ws.conf import conf
from broker_ws.servers.base import FastPath, Transport
from broker_ws.wire.encoded import EncodedFrame

SERVER = "daphne"
DIRECT_WRITE = FastPath(SERVER, "direct write")
WRITE_BUFFER = FastPath(SERVER, "write buffer")
PING_PHASE = FastPath(SERVER, "ping phase")
CLOSE_HANDSHAKE = FastPath(SERVER, "close handshake")
RELEASE = FastPath(SERVER, "release of closed connections")
ADMISSION = FastPath(SERVER, "admission at the accept")
REFUSAL = FastPath(SERVER, "handshake refusal with a reason")


def daphne_protocol(send: Any) -> Any | None:
    """The daphne protocol of this session, or None under any other server."""
    args = getattr(send, "args", None)
    protocol = args[0] if args else None
    if not (callable(getattr(protocol, "sendMessage", None)) and hasattr(protocol, "serverSend")):
        return None
    return protocol


def transport_for(send: Any) -> DaphneTransport | None:
    """A :class:`DaphneTransport` if ``send`` is daphne's, else None."""
    protocol = daphne_protocol(send)
    return DaphneTransport(protocol) if protocol is not None else None


class DaphneTransport(Transport):
    """One daphne session's shortcuts (see the module docstring)."""

    server = SERVER
    handles_sigterm = True

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        factory = getattr(protocol, "factory", None)
        #: Whether frames can be framed here: a server that does not mask frames.
        self._framed_ok = (
            getattr(factory, "isServer", False)
            and not getattr(protocol, "maskServerFrames", True)
            and hasattr(protocol, "send_queue")
            and hasattr(protocol, "send_state")
        )
        self._tcp = _buffering_transport(protocol)
        self.buffer_limit = conf.SLOW_CONSUMER_BUFFER
        self._ping_phase: PingPhase | None = None

    # --- writing ------------------------------------------------------------
    def write(self, frame: EncodedFrame) -> bool:
        if not DIRECT_WRITE.enabled:
            return False
        protocol = self._protocol
        try:
            if not self._framed_ok or not _plain_open(protocol, len(frame.data)):
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
        except Exception as exc:
            return self.write_failed(DIRECT_WRITE, exc)

    def buffered(self) -> int | None:
        tcp = self._tcp
        if tcp is None or not WRITE_BUFFER.enabled:
            return None
        try:
            return int(len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen)
        except Exception as exc:
            WRITE_BUFFER.fail(exc)
            return None

    def connection_closed(self) -> bool:
        protocol = self._protocol
        try:
            transport = protocol.transport
            return bool(
                protocol.state != protocol.STATE_OPEN
                or transport is None
                or getattr(transport, "disconnecting", False)
            )
        except Exception:
            return False  # unknown: not known to be closed

    # --- the session's lifecycle -----------------------------------------------
    async def refuse(self, scope: Any, send: Any, status: int, reason: str) -> None:
        """daphne has no WebSocket Denial Response and answers ``websocket.close``
        with "403 Access denied": fail autobahn's handshake with ``status`` and
        ``reason`` (the HTTP status line) as daphne's own rejection does it."""
        if REFUSAL.enabled and _guarded(REFUSAL, _deny_handshake, self._protocol, status, reason):
            return
        await super().refuse(scope, send, status, reason)

    def before_accept(self) -> None:
        """Make autobahn send a close frame when it fails the connection.

        autobahn fails a connection (a message over daphne's size limit, a
        protocol error, invalid UTF-8) by dropping TCP while ``failByDrop`` is
        on, its default, which daphne never changes: the client saw 1006 instead
        of the 1009 (1002, 1007) with a reason that protocol.md promises. The
        first connection of a process also installs the process-wide hooks.
        """
        self._protocol.failByDrop = False
        global _first_connection_seen
        if not _first_connection_seen:
            _first_connection_seen = True
            skip_autobahn_debug_pretty_printing()
            server = _daphne_server(self._protocol)
            _guarded(RELEASE, release_upgrade_requests, server)
            _guarded(ADMISSION, admit_daphne_connections, server)

    def after_accept(self) -> None:
        if PING_PHASE.enabled:
            self._ping_phase = _guarded(PING_PHASE, ping_phase, self._protocol)

    def client_spoke(self) -> None:
        phase = self._ping_phase
        if phase is not None and PING_PHASE.enabled:
            _guarded(PING_PHASE, phase.restore)

    def allow_close_handshake(self, seconds: float) -> None:
        """Give the client ``seconds`` to answer the server's close frame, instead of
        autobahn's one second: autobahn then aborts (TCP reset), which loses what
        the server still buffers and what the client has not read yet, the close
        frame included (the client sees 1006)."""
        protocol = self._protocol
        current = getattr(protocol, "closeHandshakeTimeout", None)
        if isinstance(current, int | float) and CLOSE_HANDSHAKE.enabled:
            protocol.closeHandshakeTimeout = max(float(seconds), current)

    def after_disconnect(self) -> None:
        if RELEASE.enabled:
            _guarded(RELEASE, release_when_forgotten, self._protocol)


_first_connection_seen = False


def _guarded(path: FastPath, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, or None with ``path`` turned off if it raises."""
    try:
        return call(*args)
    except Exception as exc:
        path.fail(exc)
        return None


def _deny_handshake(protocol: Any, status: int, reason: str) -> bool:
    """What daphne's ``serverReject`` does, with our status and reason."""
    from autobahn.websocket.types import ConnectionDeny

    protocol.handshake_deferred.errback(ConnectionDeny(code=status, reason=reason))
    del protocol.handshake_deferred
    protocol.server.protocol_disconnected(protocol)
    return True


def _buffering_transport(protocol: Any) -> Any | None:
    """The Twisted ``FileDescriptor`` that buffers this socket's bytes (TLS wraps TCP)."""
    transport = getattr(protocol, "transport", None)
    for candidate in (transport, getattr(transport, "transport", None)):
        if all(hasattr(candidate, name) for name in ("dataBuffer", "_tempDataLen", "offset")):
            return candidate
    return None


def _plain_open(protocol: Any, length: int) -> bool:
    """Open, uncompressed, nothing queued or half-sent, within the size limits."""
    limit = protocol.maxMessagePayloadSize
    fragment = protocol.autoFragmentSize
    return bool(
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


# --- keepalive pings -------------------------------------------------------------
class PingPhase:
    """The ping clock offset of one daphne session."""

    __slots__ = ("_offset", "_protocol", "_written")

    def __init__(self, protocol: Any, offset: float) -> None:
        self._protocol = protocol
        self._offset = offset
        self._written: float | None = None

    def restore(self) -> None:
        """Move daphne's ping clock back by the offset if daphne restarted it since
        the last call (once per restart: several messages may share one)."""
        last_ping = getattr(self._protocol, "last_ping", None)
        if last_ping == self._written or not isinstance(last_ping, int | float):
            return
        self._written = min(last_ping, time.time()) - self._offset
        self._protocol.last_ping = self._written


def ping_phase(protocol: Any, rand: random.Random | None = None) -> PingPhase | None:
    """A random ping phase for this daphne session, applied at once; None when
    daphne does not ping (``--ping-interval`` 0)."""
    interval = getattr(getattr(protocol, "server", None), "ping_interval", None)
    if not isinstance(interval, int | float) or interval <= 0:
        return None
    phase = PingPhase(protocol, (rand or random).uniform(0, interval))
    phase.restore()
    return phase


# --- process-wide hooks, installed by the first connection -----------------------
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


def _daphne_server(protocol: Any) -> Any | None:
    """The daphne ``Server`` this protocol belongs to, or None."""
    server = getattr(protocol, "server", None)
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


def release_upgrade_requests(server: Any) -> bool:
    """Free each WebSocket upgrade's HTTP request by reference counting.

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

    return _wrap_once(server, "protocol_disconnected", wrap)


def _break_request_cycle(request: Any) -> None:
    channel = getattr(request, "channel", None)
    requests = getattr(channel, "requests", None)
    if isinstance(requests, list) and request in requests:
        requests.remove(request)
    request.channel = None


#: Seconds between two looks at whether daphne has forgotten a closed connection.
FORGOTTEN_CHECK = 1.5
#: Looks before giving up (daphne reaps once a second; a slow reap is left as it is).
FORGOTTEN_TRIES = 8


def release_when_forgotten(protocol: Any) -> None:
    """Once daphne has forgotten a closed connection, clear its protocol.

    daphne's ``WebSocketProtocol`` holds Deferreds whose callbacks are its own
    bound methods (and autobahn's per-connection state refers back to it), so a
    closed connection is one reference cycle that only a garbage collection
    frees. Once daphne has dropped the protocol from ``server.connections`` (its
    application checker does so about a second after the connection ends),
    nothing calls it any more; clearing its attributes breaks the cycle and
    reference counting frees it.
    """
    connections = getattr(getattr(protocol, "server", None), "connections", None)
    if not isinstance(connections, dict):
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


# --- admission at the accept --------------------------------------------------------
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


def admit_daphne_connections(server: Any) -> bool:
    """Let :mod:`broker_ws.auth.admission` decide every new TCP connection before
    daphne builds its HTTP protocol.

    daphne's ``HTTPFactory.buildProtocol`` is wrapped, once per server: a
    connection of an address that still has connections in its bucket gets
    daphne's protocol as before; any other gets a ``HeldConnection`` that
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
                not ADMISSION.enabled
                or not isinstance(host, str)
                or not admission.applies_to(host)
                or admission.admit_now(host)
            ):
                return original(addr)
            held = held_class(original, addr)
            admission.wait(host, held)
            return held

        return buildProtocol

    factory = getattr(server, "http_factory", None)
    return _wrap_once(factory, "buildProtocol", wrap)


@functools.cache
def _held_connection_class() -> type | None:
    """``HeldConnection``, a Twisted protocol, defined once Twisted is there."""
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
