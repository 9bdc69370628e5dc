"""The protocol v1 session: one instance per WebSocket connection.

Thin by design: decode with :mod:`broker_ws.wire.protocol`, decide, and hand
fan-out to the process's :class:`~broker_ws.session.hub.Hub`. It subclasses
Channels' ``AsyncConsumer`` but runs its own receive loop instead of
``dispatch``: since channels 4.2 ``dispatch`` hops to a thread
(``aclose_old_connections``) before every handler, and a session has no
per-connection channel-layer channel at all (fan-out is per process), which
also keeps an idle session small. Database work happens only in
:func:`broker_ws.auth.authenticate.authenticate` (the configured
``TOKEN_AUTHENTICATOR``), through ``database_sync_to_async``.

Every send goes through :class:`~broker_ws.session.outgoing.Outgoing`, which keeps
per-session order (while a request is being answered, later frames wait and
follow) and applies the slow-consumer policy.

Authorization is a small state machine: *unauthorized* (within
``AUTH_TIMEOUT`` of the open), *authorizing* (a token is being checked),
*authorized*, or *closed*. Whatever ends a session (the client leaving, a
timeout, a failing dependency) moves it to *closed* at once, and a session
that is closed while its authorization is in flight is never registered
afterwards. A failing database or bus is answered with ``unavailable`` and
4008 (reconnect after a back-off), never with ``auth_failed``/4001.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from channels.consumer import AsyncConsumer
from django.db import Error as DatabaseError

from broker_ws import metrics
from broker_ws.auth.authenticate import authenticate
from broker_ws.auth.identity import Identity
from broker_ws.auth.origin import origin_allowed
from broker_ws.auth.throttle import client_address, get_throttle
from broker_ws.conf import conf
from broker_ws.exceptions import AuthenticationError, ProtocolError, TooManySessions, Unavailable
from broker_ws.outbox.resume import missed_frames
from broker_ws.servers import Transport, transport_for
from broker_ws.session import commands
from broker_ws.session.collector import get_collector
from broker_ws.session.drain import get_drain
from broker_ws.session.hub import Hub, get_hub
from broker_ws.session.outgoing import Frame, Outgoing
from broker_ws.session.ratelimit import TokenBucket
from broker_ws.session.symbols import entitled, split_symbols
from broker_ws.wire import frames, protocol
from broker_ws.wire.encoded import EncodedFrame
from broker_ws.wire.protocol import CloseCode, ErrorCode

logger = logging.getLogger(__name__)

ROOT_PATHS = frozenset({"", "/"})

#: The reply to a request the server cannot serve because a dependency failed;
#: what failed stays in the server's log.
_UNAVAILABLE_REPLY = frames.error(
    ErrorCode.UNAVAILABLE, "the server is temporarily unavailable; reconnect after a back-off"
)


#: The reason given to a client that offers only subprotocols this server does not speak.
_UNSUPPORTED_SUBPROTOCOLS = (
    f"Unsupported WebSocket subprotocol: this server speaks {protocol.SUBPROTOCOL} "
    "(or offer none)"
)


class StreamConsumer(AsyncConsumer):
    """One client session speaking protocol v1."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        self.identity: Identity | None = None
        self.symbols: set[str] = set()
        self.hub: Hub | None = None
        self.closed = False
        self.transport: Transport = transport_for(send)
        self.out = Outgoing(send, self.transport, self._too_slow, self._write_failed)
        self.rate = TokenBucket(conf.MAX_MESSAGES_PER_SECOND)
        self._counted = False  # in the session gauges
        # Per login, the last seq the client already has (from its resume).
        self.seen: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._authorizing = False
        self._address = ""
        self._admitted = False  # counted among its address's unauthenticated sockets
        self._held = False  # over the unauthenticated cap: held, then closed with 4006
        #: Tasks of this session (closes), referenced until done.
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_commands = 0  # the host's commands being handled
        # Kept by the hub's heartbeat sweep (broker_ws/session/heartbeat.py).
        self.heartbeat_mark = 0
        self.heartbeat_since = 0.0
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    self.transport.client_spoke()
                    await self._on_receive(message)
                elif kind == "websocket.connect":
                    await self._on_connect()
                elif kind == "websocket.disconnect":
                    break
        finally:
            self._forget()
            # Only now, with the connection gone, is the session off the drain's
            # books: a drain waits for the close frames it asked for to be written.
            get_drain().discard(self)
            self.transport.after_disconnect()

    # --- lifecycle ------------------------------------------------------
    async def _on_connect(self) -> None:
        metrics.SESSIONS.inc()
        self._counted = True
        if self.scope.get("path", "/") not in ROOT_PATHS or not origin_allowed(self.scope):
            # Refused at the handshake: the client sees HTTP 403.
            self.closed = True
            await self.base_send({"type": "websocket.close"})
            return
        offered = self.scope.get("subprotocols") or ()
        if offered and protocol.SUBPROTOCOL not in offered:
            self.closed = True
            await self.transport.refuse(
                self.scope, self.base_send, 400, _UNSUPPORTED_SUBPROTOCOLS
            )
            return
        self.transport.before_accept()
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if offered:
            accept["subprotocol"] = protocol.SUBPROTOCOL
        await self.base_send(accept)
        self.transport.after_accept()
        get_collector().session_event()
        drain = get_drain()
        drain.install(self.transport)
        drain.add(self)
        self._address = client_address(self.scope)
        throttle = get_throttle()
        if not throttle.admit(self._address):
            self._held = True
            self._spawn(self._refuse_crowded(throttle.hold(self._address)))
            return
        self._admitted = True
        self._set_timer(conf.AUTH_TIMEOUT, CloseCode.AUTH_TIMEOUT)

    async def _refuse_crowded(self, hold: float) -> None:
        """Too many unauthenticated sockets: held (its messages unread), then 4006."""
        await asyncio.sleep(hold)
        await self._error(ErrorCode.RATE_LIMITED, "too many unauthenticated connections")
        await self.close(CloseCode.RATE_LIMITED)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release_admission(self) -> None:
        if self._admitted:
            self._admitted = False
            get_throttle().release(self._address)

    def _set_timer(self, delay: float, code: CloseCode) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0), self._close_soon, code)

    def _close_soon(self, code: CloseCode) -> None:
        if code == CloseCode.AUTH_TIMEOUT and self._authorizing:
            # The client did send its token; the server could not check it in time.
            self._spawn(self._close_unavailable())
        else:
            self._spawn(self.close(code))

    async def _close_unavailable(self) -> None:
        await self.out.send_last(_UNAVAILABLE_REPLY)  # ahead of the held replies
        await self.close(CloseCode.UNAVAILABLE)

    async def close(self, code: CloseCode, answer_within: float = 0.0) -> None:
        """Close the session with a documented code and leave the hub.

        ``answer_within``: seconds the client may take to answer the close frame
        (a client behind in reading needs them to read what is buffered before it)
        before the server drops the connection; 0 keeps the server's own limit."""
        if self.closed:
            return
        self.closed = True
        if answer_within > 0:
            self.transport.allow_close_handshake(answer_within)
        metrics.CLOSES.labels(code=str(int(code))).inc()
        logger.info("broker_ws: closing session with %s (%d)", code.name, code)
        try:
            await self.base_send({"type": "websocket.close", "code": int(code)})
        except Exception as exc:  # the client left first
            logger.debug("broker_ws: close on a closed socket (%r)", exc)
        finally:
            self._forget()

    def _forget(self) -> None:
        self.closed = True
        self._release_admission()
        if self._counted:
            self._counted = False
            get_collector().session_closed()
            metrics.SESSIONS.dec()
            metrics.SUBSCRIPTIONS.dec(len(self.symbols))
            if self.identity is not None:
                metrics.AUTHENTICATED.dec()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.hub is not None:
            identity = self.identity
            logins = identity.logins if identity is not None else ()
            user_id = identity.user_id if identity is not None else None
            self.hub.remove_session(self, self.symbols, logins, user_id)
            self.hub = None
        self.out.close()

    # --- sending ----------------------------------------------------------
    def frames_written(self) -> int:
        """How many frames were written to the client so far (for the heartbeat)."""
        return self.out.written

    def stream_logins(self) -> tuple[str, ...]:
        """The logins whose frames this session receives (none before authorized)."""
        return self.identity.logins if self.identity is not None else ()

    async def push(self, frame: Frame) -> None:
        """Send one frame after every frame queued before it."""
        await self.out.push(frame)

    async def notify(self, text: str) -> None:
        """Send a control notice at once, ahead of anything queued (see
        :meth:`Outgoing.send_out_of_band`)."""
        await self.out.send_out_of_band(text)

    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        """Send a quote frame (see :meth:`Outgoing.offer_quote`)."""
        return self.out.offer_quote(key, frame)

    async def push_status(self, key: str, frame: EncodedFrame) -> None:
        """Send an instrument status frame (see :meth:`Outgoing.push_after_quote`)."""
        await self.out.push_after_quote(key, frame)

    async def push_account(self, login: str, seq: int, frame: Frame) -> None:
        """Send an account frame unless the client said on resume that it has it."""
        floor = self.seen.get(login)
        if floor is not None:
            if seq <= floor:
                return
            del self.seen[login]
        await self.out.push(frame)

    async def _too_slow(self) -> None:
        await self.close(CloseCode.TOO_SLOW)

    async def _write_failed(self) -> None:
        await self.close(CloseCode.UNAVAILABLE)

    async def revoke(self, revoked_at: float) -> None:
        """Close the session if its token was issued up to ``revoked_at`` (epoch s).

        A token issued later (the user logged in again) keeps its session.
        """
        if self.identity is None or self.identity.issued_at > revoked_at:
            return
        await self._error(ErrorCode.REVOKED, "access was revoked")
        await self.close(CloseCode.REVOKED)

    async def _error(self, code: str, message: str, **extra: Any) -> None:
        await self.push(frames.error(code, message, **extra))

    # --- receiving --------------------------------------------------------
    async def _on_receive(self, message: dict[str, Any]) -> None:
        if self.closed or self._held:
            return
        if not self.rate.allow():
            await self._error(
                ErrorCode.RATE_LIMITED,
                f"at most {conf.MAX_MESSAGES_PER_SECOND} messages per second",
            )
            await self.close(CloseCode.RATE_LIMITED)
            return
        text = message.get("text")
        if text is None:
            await self._error(ErrorCode.BINARY_NOT_SUPPORTED, "binary frames are not supported")
            return
        if text == protocol.PING:
            await self.push(protocol.PONG)
            return
        limit = conf.MAX_MESSAGE_BYTES
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            await self._error(ErrorCode.MESSAGE_TOO_LARGE, f"messages are limited to {limit} bytes")
            return
        try:
            command = protocol.parse(text)
            if isinstance(command, protocol.Authorize):
                await self._authorize(command)
            elif isinstance(command, protocol.Request):
                await self._request(command)
            elif self.identity is None:
                raise ProtocolError(
                    ErrorCode.NOT_AUTHORIZED, "send the authorization message first"
                )
            elif isinstance(command, protocol.Subscribe):
                await self._subscribe(command)
            else:
                await self._unsubscribe(command)
        except ProtocolError as exc:
            await self._error(exc.code, exc.message, **exc.extra)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this session's own task is being cancelled
            # A cancellation that is not ours must not end this session silently.
            logger.error("broker_ws: a shared task was cancelled under a client message")
            await self._error(ErrorCode.INTERNAL_ERROR, "the server could not handle this message")
        except Exception:
            # A bug of ours must not cost the client its session (nor a 1011).
            logger.exception("broker_ws: failed to handle a client message")
            await self._error(ErrorCode.INTERNAL_ERROR, "the server could not handle this message")

    async def _request(self, request: protocol.Request) -> None:
        """A command of the host's: answered by its handler, in a task of its own so
        that pings and other messages are read meanwhile (at most
        ``MAX_PENDING_COMMANDS`` at once)."""
        handler = commands.handler_for(request.event)
        if handler is None:
            await self.push(commands.reply_error(request, ErrorCode.UNKNOWN_EVENT, "unknown event"))
        elif self.identity is None:
            await self.push(
                commands.reply_error(
                    request, ErrorCode.NOT_AUTHORIZED, "send the authorization message first"
                )
            )
        elif self._pending_commands >= conf.MAX_PENDING_COMMANDS:
            limit = conf.MAX_PENDING_COMMANDS
            await self.push(
                commands.reply_error(
                    request,
                    ErrorCode.TOO_MANY_PENDING,
                    f"at most {limit} commands of a session are handled at once",
                )
            )
        else:
            self._pending_commands += 1
            self._spawn(self._answer(request, self.identity, handler))

    async def _answer(
        self, request: protocol.Request, identity: Identity, handler: commands.Handler
    ) -> None:
        try:
            answer = await commands.answer(request, identity, handler)
        finally:
            self._pending_commands -= 1
        if not self.closed:
            await self.push(answer)

    async def _authorize(self, command: protocol.Authorize) -> None:
        first = self.identity is None
        self._authorizing = first
        try:
            identity = await authenticate(command.token)
        except AuthenticationError as exc:
            metrics.AUTH_FAILURES.inc()
            if first:
                delay = get_throttle().fail(self._address)
                if delay:
                    # An address that keeps failing waits for its answer; its socket is
                    # held meanwhile (nothing else it sends is read).
                    self._authorizing = False
                    if self._timer is not None:
                        self._timer.cancel()
                    await asyncio.sleep(delay)
                    if self.closed:
                        return
            await self._error(ErrorCode.AUTH_FAILED, str(exc))
            if first:
                await self.close(CloseCode.AUTH_FAILED)
            return
        except Unavailable as exc:
            await self._unavailable(exc, close=first)
            return
        except Exception:
            # The host's TOKEN_AUTHENTICATOR failed in a way it does not document (or
            # returned something that is not an Identity): a bug, not the client's.
            logger.exception("broker_ws: the token authenticator failed")
            await self._error(ErrorCode.INTERNAL_ERROR, "the server could not check the token")
            if first:
                await self.close(CloseCode.UNAVAILABLE)
            return
        finally:
            self._authorizing = False
        if self.closed:
            return
        if not first:
            await self._refresh(identity)
            return
        self._authorizing = True
        try:
            await self._register(identity, command.resume, command.epochs)
        except Exception:
            logger.exception("broker_ws: authorizing a session failed")
            await self._error(ErrorCode.INTERNAL_ERROR, "the server could not authorize you")
            await self.close(CloseCode.UNAVAILABLE)
        finally:
            self._authorizing = False

    async def _register(
        self,
        identity: Identity,
        resume: dict[str, int] | None,
        epochs: dict[str, str] | None,
    ) -> None:
        """Take the session's slots in the hub, then answer ``authorized`` (and the
        resume) before any live frame of its logins."""
        async with self.out.answering() as replies:
            try:
                hub = await self._get_hub()
                seqs = await hub.add_session(self, identity.user_id, identity.logins)
            except TooManySessions as exc:
                limit = conf.MAX_SESSIONS_PER_LOGIN
                replies.append(
                    frames.error(
                        ErrorCode.TOO_MANY_SESSIONS,
                        f"at most {limit} sessions per login on this server",
                        logins=exc.logins,
                    )
                )
                self._close_soon(CloseCode.TOO_MANY_SESSIONS)
                return
            except Unavailable as exc:
                logger.warning(
                    "broker_ws: cannot authorize a session now (%s: %s)", exc, exc.__cause__
                )
                replies.append(_UNAVAILABLE_REPLY)
                self._close_soon(CloseCode.UNAVAILABLE)
                return
            if seqs is None:
                return  # closed meanwhile: the hub did not register it
            metrics.AUTHENTICATED.inc()
            get_collector().session_event()
            self.identity = identity
            self._release_admission()
            our_epochs = hub.epochs_of(identity.logins)
            replay: list[str] = []
            if resume:
                try:
                    replay, self.seen = await missed_frames(resume, seqs, epochs, our_epochs)
                except DatabaseError as exc:
                    logger.warning("broker_ws: cannot read the history for a resume (%s)", exc)
                    replies.append(_UNAVAILABLE_REPLY)
                    self._close_soon(CloseCode.UNAVAILABLE)
                    return
            replies.append(
                frames.authorized(
                    identity.username,
                    identity.logins,
                    identity.expires_ms,
                    seqs,
                    our_epochs,
                    protocol.PROTOCOL_VERSION,
                )
            )
            replies.extend(replay)
        if not self.closed:
            self._set_timer(identity.expires_ms / 1000 - time.time(), CloseCode.TOKEN_EXPIRED)

    async def _refresh(self, identity: Identity) -> None:
        """In-band refresh: same user, new expiry; logins stay those the session was
        opened with, and a resume is not replayed again."""
        assert self.identity is not None
        if identity.user_id != self.identity.user_id:
            await self._error(ErrorCode.USER_MISMATCH, "a session cannot change its user")
            return
        self.identity = Identity(
            identity.user_id,
            identity.username,
            self.identity.logins,
            identity.expires_ms,
            identity.issued_at,
        )
        logins = self.identity.logins
        hub = self.hub
        await self.push(
            frames.authorized(
                identity.username,
                logins,
                identity.expires_ms,
                hub.seqs_of(logins) if hub is not None else {},
                hub.epochs_of(logins) if hub is not None else {},
                protocol.PROTOCOL_VERSION,
            )
        )
        self._set_timer(identity.expires_ms / 1000 - time.time(), CloseCode.TOKEN_EXPIRED)

    async def _unavailable(self, exc: Exception, *, close: bool) -> None:
        logger.warning("broker_ws: cannot check a token now (%s: %s)", exc, exc.__cause__)
        await self.push(_UNAVAILABLE_REPLY)
        if close:
            await self.close(CloseCode.UNAVAILABLE)

    async def _get_hub(self) -> Hub:
        if self.hub is None:
            self.hub = await get_hub()
        return self.hub

    async def _subscribe(self, command: protocol.Subscribe) -> None:
        accepted, refused = split_symbols(command.symbols)
        new = [symbol for symbol in accepted if symbol not in self.symbols]
        if new and conf.SYMBOL_ENTITLEMENTS is not None:
            # Only what the subscribe adds: a symbol subscribed already was granted.
            assert self.identity is not None
            new, denied = await entitled(self.identity, new)  # ProtocolError if it fails
            if self.closed:
                return
            if denied:
                unwanted = set(denied)
                accepted = [s for s in accepted if s not in unwanted]
                unwanted.update(refused)
                refused = [s for s in command.symbols if s in unwanted]  # the client's order
        again = [symbol for symbol in accepted if symbol in self.symbols]
        room = max(conf.MAX_SUBSCRIPTIONS - len(self.symbols), 0)
        over = new[room:]
        new = new[:room]
        async with self.out.answering() as replies:
            hub = await self._get_hub()
            snapshot = await hub.add_quotes(self, new, command.interval_ms)
            if self.closed:
                return  # the hub did not register a closed session
            if again:
                # Subscribed already: at this message's max_rate (or none) from now on.
                await hub.move_quotes(self, again, command.interval_ms)
            self.symbols.update(new)
            metrics.SUBSCRIPTIONS.inc(len(new))
            replies.append(frames.control("subscribed", [s for s in accepted if s not in over]))
            if refused:
                replies.append(
                    frames.error(
                        ErrorCode.INVALID_SYMBOLS,
                        "these symbols are not available",
                        symbols=refused,
                    )
                )
            if over:
                replies.append(
                    frames.error(
                        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                        f"a session may subscribe to at most {conf.MAX_SUBSCRIPTIONS} symbols",
                        symbols=over,
                    )
                )
            replies.extend(snapshot)

    async def _unsubscribe(self, command: protocol.Unsubscribe) -> None:
        removed = [symbol for symbol in command.symbols if symbol in self.symbols]
        self.symbols.difference_update(removed)
        metrics.SUBSCRIPTIONS.dec(len(removed))
        if self.hub is not None and removed:
            self.hub.remove_quotes(self, removed)
        await self.push(frames.control("unsubscribed", list(command.symbols)))
