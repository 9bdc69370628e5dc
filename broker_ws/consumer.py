"""The protocol v1 session: one instance per WebSocket connection.

Thin by design: decode with :mod:`broker_ws.protocol`, decide, and hand
fan-out to the process's :class:`~broker_ws.hub.Hub`. It subclasses
Channels' ``AsyncConsumer`` but runs its own receive loop instead of
``dispatch``: since channels 4.2 ``dispatch`` hops to a thread
(``aclose_old_connections``) before every handler, and a session has no
per-connection channel-layer channel at all (fan-out is per process), which
also keeps an idle session small. Database work happens only in
:func:`broker_ws.auth.authenticate`, through ``database_sync_to_async``.

Every send goes through :class:`~broker_ws.outgoing.Outgoing`, which keeps
per-session order (while a request is being answered, later frames wait and
follow) and applies the slow-consumer policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from channels.consumer import AsyncConsumer

from broker_ws import frames, metrics, protocol
from broker_ws.auth import Identity, authenticate
from broker_ws.conf import conf
from broker_ws.direct_write import EncodedFrame
from broker_ws.exceptions import AuthenticationError, ProtocolError
from broker_ws.hub import Hub, get_hub
from broker_ws.origin import origin_allowed
from broker_ws.outgoing import Outgoing
from broker_ws.pings import PingPhase, ping_phase
from broker_ws.protocol import CloseCode, ErrorCode
from broker_ws.ratelimit import TokenBucket
from broker_ws.resume import missed_frames
from broker_ws.symbols import split_symbols

logger = logging.getLogger(__name__)

ROOT_PATHS = frozenset({"", "/"})


class StreamConsumer(AsyncConsumer):
    """One client session speaking protocol v1."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        self.identity: Identity | None = None
        self.symbols: set[str] = set()
        self.hub: Hub | None = None
        self.closed = False
        self.out = Outgoing(send, self._too_slow)
        self.rate = TokenBucket(conf.MAX_MESSAGES_PER_SECOND)
        self._counted = False  # in the session gauges
        # Per login, the last seq the client already has (from its resume).
        self.seen: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ping_phase: PingPhase | None = None
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    if self._ping_phase is not None:
                        self._ping_phase.restore()  # daphne restarted its ping clock
                    await self._on_receive(message)
                elif kind == "websocket.connect":
                    await self._on_connect()
                elif kind == "websocket.disconnect":
                    break
        finally:
            self._forget()

    # --- lifecycle ------------------------------------------------------
    async def _on_connect(self) -> None:
        metrics.SESSIONS.inc()
        self._counted = True
        if self.scope.get("path", "/") not in ROOT_PATHS or not origin_allowed(self.scope):
            # Refused at the handshake: the client sees HTTP 403.
            self.closed = True
            await self.base_send({"type": "websocket.close"})
            return
        await self.base_send({"type": "websocket.accept"})
        self._ping_phase = ping_phase(self.base_send)
        self._set_timer(conf.AUTH_TIMEOUT, CloseCode.AUTH_TIMEOUT)

    def _set_timer(self, delay: float, code: CloseCode) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0), self._close_soon, code)

    def _close_soon(self, code: CloseCode) -> None:
        asyncio.get_running_loop().create_task(self.close(code))

    async def close(self, code: CloseCode) -> None:
        """Close the session with a documented code and leave the hub."""
        if self.closed:
            return
        self.closed = True
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
        if self._counted:
            self._counted = False
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
    async def push(self, text: str) -> None:
        """Send one frame after every frame queued before it."""
        await self.out.push(text)

    def offer_quote(self, key: str, frame: EncodedFrame) -> Awaitable[None] | None:
        """Send a quote frame (see :meth:`Outgoing.offer_quote`)."""
        return self.out.offer_quote(key, frame)

    async def push_account(self, login: str, seq: int, text: str) -> None:
        """Send an account frame unless the client said on resume that it has it."""
        floor = self.seen.get(login)
        if floor is not None:
            if seq <= floor:
                return
            del self.seen[login]
        await self.out.push(text)

    async def _too_slow(self) -> None:
        await self.close(CloseCode.TOO_SLOW)

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
        if self.closed:
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
        except Exception:
            # A bug of ours must not cost the client its session (nor a 1011).
            logger.exception("broker_ws: failed to handle a client message")
            await self._error(ErrorCode.INTERNAL_ERROR, "the server could not handle this message")

    async def _authorize(self, command: protocol.Authorize) -> None:
        try:
            identity = await authenticate(command.token)
        except AuthenticationError as exc:
            metrics.AUTH_FAILURES.inc()
            await self._error(ErrorCode.AUTH_FAILED, str(exc))
            if self.identity is None:
                await self.close(CloseCode.AUTH_FAILED)
            return
        if self.identity is not None and identity.user_id != self.identity.user_id:
            await self._error(ErrorCode.USER_MISMATCH, "a session cannot change its user")
            return
        refresh = self.identity is not None
        if self.identity is not None:
            # In-band refresh: same user, new expiry; logins stay those the
            # session was opened with, and a resume is not replayed again.
            identity = Identity(
                identity.user_id,
                identity.username,
                self.identity.logins,
                identity.expires_ms,
                identity.issued_at,
            )
        async with self.out.answering() as replies:
            hub = await self._get_hub()
            limit = conf.MAX_SESSIONS_PER_LOGIN
            crowded = [] if refresh else [x for x in identity.logins if hub.sessions_of(x) >= limit]
            if crowded:
                replies.append(
                    frames.error(
                        ErrorCode.TOO_MANY_SESSIONS,
                        f"at most {limit} sessions per login on this server",
                        logins=crowded,
                    )
                )
                self._close_soon(CloseCode.TOO_MANY_SESSIONS)
                return
            seqs = await hub.add_session(self, identity.user_id, identity.logins)
            if not refresh:
                metrics.AUTHENTICATED.inc()
            self.identity = identity
            replies.append(
                frames.authorized(identity.username, identity.logins, identity.expires_ms, seqs)
            )
            if command.resume and not refresh:
                replay, self.seen = await missed_frames(command.resume, seqs)
                replies.extend(replay)
        self._set_timer(identity.expires_ms / 1000 - time.time(), CloseCode.TOKEN_EXPIRED)

    async def _get_hub(self) -> Hub:
        if self.hub is None:
            self.hub = await get_hub()
        return self.hub

    async def _subscribe(self, command: protocol.Subscribe) -> None:
        accepted, refused = split_symbols(command.symbols)
        new = [symbol for symbol in accepted if symbol not in self.symbols]
        room = max(conf.MAX_SUBSCRIPTIONS - len(self.symbols), 0)
        over = new[room:]
        new = new[:room]
        async with self.out.answering() as replies:
            hub = await self._get_hub()
            snapshot = await hub.add_quotes(self, new)
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
